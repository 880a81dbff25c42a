import TensorEngine

/// The largest |a − b| / (atol + rtol·|b|) over two arrays of equal length
/// (≤ 1 means close); the index where it happens.
public func closeness(_ a: [Double], _ b: [Double], rtol: Double, atol: Double) -> (ratio: Double, index: Int) {
    precondition(a.count == b.count, "closeness: \(a.count) vs \(b.count) elements")
    var worst = (0.0, -1)
    for i in a.indices {
        let r = abs(a[i] - b[i]) / (atol + rtol * abs(b[i]))
        if r > worst.0 || r.isNaN { worst = (r.isNaN ? .infinity : r, i) }
    }
    return worst
}

/// True when every element of `t` is within atol + rtol·|reference| of `reference`.
public func isClose(_ t: Tensor, _ reference: [Double], rtol: Double = 1e-4, atol: Double = 1e-5) -> Bool {
    t.count == reference.count && closeness(t.scalars.map(Double.init), reference, rtol: rtol, atol: atol).ratio <= 1
}

/// Random normal test data from a named stream.
public func randn(_ shape: [Int], _ stream: UInt64, scale: Float = 1) -> Tensor {
    Tensor.randomNormal(shape, stream: RandomStream(seed: 1234, stream: stream), std: scale)
}
