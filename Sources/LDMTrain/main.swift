import TensorEngine
let x = Tensor.randomNormal([1, 2, 2, 2], stream: RandomStream(seed: 1))
let w = Tensor.randomNormal([2], stream: RandomStream(seed: 2)), b = Tensor(shape: [2], repeating: 0)
for groups in [1, 2] {
    x.requiresGrad = true; x.grad = nil
    let y = groupNorm(x, groups: groups, weight: w, bias: b)
    let seed = Tensor(zeros: y.shape); seed.pointer[5] = 1
    y.backward(gradient: seed)
    var num: [Float] = []
    withoutGradient {
        for j in 0..<8 {
            let s = x.pointer[j]
            x.pointer[j] = s + 1e-2; let p = groupNorm(x, groups: groups, weight: w, bias: b).pointer[5]
            x.pointer[j] = s - 1e-2; let m = groupNorm(x, groups: groups, weight: w, bias: b).pointer[5]
            x.pointer[j] = s
            num.append((p - m) / 2e-2)
        }
    }
    print(groups, x.grad!.scalars, num)
}
