/// Programmer errors (mismatched shapes, impossible arguments) stop the process
/// with a message naming the values. Swift's own `precondition` drops its message
/// in optimised builds, and the engine is always built optimised, so within this
/// module these shadow it and report through `fatalError`, which always prints.
@inline(__always)
func precondition(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                  file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError(message(), file: file, line: line) }
}

func preconditionFailure(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    fatalError(message(), file: file, line: line)
}
