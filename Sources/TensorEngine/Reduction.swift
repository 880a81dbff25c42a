/// Sums and means over axes.

extension Tensor {
    /// Σ over `axes` (all axes when nil). The result keeps the reduced axes as size
    /// 1 when `keepDims`, otherwise drops them.
    public func sum(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let reduced = Set((axes ?? Array(0..<rank)).map { normalizedAxis($0, rank: rank) })
        let kept = shape.enumerated().map { reduced.contains($0.offset) ? 1 : $0.element }
        let outShape = keepDims ? kept : shape.enumerated().filter { !reduced.contains($0.offset) }.map(\.element)
        // Walk the input; the output is the broadcast operand (stride 0 on reduced axes).
        let plan = BroadcastPlan(outShape: shape, a: shape, b: kept)
        let out = Tensor(zeros: outShape)
        let px = pointer, po = out.pointer, n = plan.rowLength, ib = plan.bInner
        plan.forEachRow { o, _, bo in
            let x = px + o, y = po + bo
            if ib == 1 {
                for i in 0..<n { y[i] += x[i] }
            } else {
                var s: Float = 0
                for i in 0..<n { s += x[i] }
                y[0] += s
            }
        }
        if Tape.needsGrad(self) {
            Tape.record(out, inputs: [self]) { [slot] g in
                let pg = g.pointer
                slot.withZeroedGradient { d in
                    plan.forEachRow { o, _, bo in
                        let dx = d + o, y = pg + bo
                        if ib == 1 { for i in 0..<n { dx[i] += y[i] } } else { let s = y[0]; for i in 0..<n { dx[i] += s } }
                    }
                }
            }
        }
        return out
    }

    /// Mean over `axes` (all axes when nil).
    public func mean(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let reduced = (axes ?? Array(0..<rank)).map { shape[normalizedAxis($0, rank: rank)] }.reduce(1, *)
        return sum(axes: axes, keepDims: keepDims).scaled(by: 1 / Float(max(reduced, 1)))
    }
}
