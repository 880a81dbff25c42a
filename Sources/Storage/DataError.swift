/// A data or input-file problem, stated in one line naming the file (and the line
/// or key where there is one).
public struct DataError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
