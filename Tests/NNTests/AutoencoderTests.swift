import NN
import Testing
import TensorEngine
import TestSupport

/// The state_dict keys and shapes of CompVis's AutoencoderKL
/// (ldm/models/autoencoder.py, ldm/modules/diffusionmodules/model.py) for an
/// architecture, written out from that code's __init__ order, independently of
/// the Swift model: ResnetBlock registers norm1, conv1, norm2, conv2, nin_shortcut;
/// AttnBlock norm, q, k, v, proj_out; the decoder's `up` list is built by
/// insert(0, …), so up.0 (full resolution) comes first.
func compVisAutoencoderKeys(_ a: AutoencoderArchitecture) -> [(String, [Int])] {
    var keys: [(String, [Int])] = []
    func conv(_ p: String, _ i: Int, _ o: Int, _ k: Int) { keys += [("\(p).weight", [o, i, k, k]), ("\(p).bias", [o])] }
    func norm(_ p: String, _ c: Int) { keys += [("\(p).weight", [c]), ("\(p).bias", [c])] }
    func resnet(_ p: String, _ i: Int, _ o: Int) {
        norm("\(p).norm1", i); conv("\(p).conv1", i, o, 3); norm("\(p).norm2", o); conv("\(p).conv2", o, o, 3)
        if i != o { conv("\(p).nin_shortcut", i, o, 1) }
    }
    func attn(_ p: String, _ c: Int) {
        norm("\(p).norm", c)
        for n in ["q", "k", "v", "proj_out"] { conv("\(p).\(n)", c, c, 1) }
    }
    func mid(_ p: String, _ c: Int) { resnet("\(p).block_1", c, c); attn("\(p).attn_1", c); resnet("\(p).block_2", c, c) }
    let inMult = [1] + a.chMult
    conv("encoder.conv_in", a.inChannels, a.ch, 3)
    var res = a.resolution
    for i in a.chMult.indices {
        var c = a.ch * inMult[i]
        for j in 0..<a.numResBlocks {
            resnet("encoder.down.\(i).block.\(j)", c, a.ch * a.chMult[i]); c = a.ch * a.chMult[i]
        }
        for j in 0..<a.numResBlocks where a.attnResolutions.contains(res) { attn("encoder.down.\(i).attn.\(j)", c) }
        if i != a.chMult.count - 1 { conv("encoder.down.\(i).downsample.conv", c, c, 3); res /= 2 }
    }
    let top = a.ch * a.chMult.last!
    mid("encoder.mid", top)
    norm("encoder.norm_out", top)
    conv("encoder.conv_out", top, 2 * a.zChannels, 3)
    conv("decoder.conv_in", a.zChannels, top, 3)
    mid("decoder.mid", top)
    // up.i's input channels: the previous (coarser) level's output, or `top` at the last level.
    for i in a.chMult.indices {
        var c = i == a.chMult.count - 1 ? top : a.ch * a.chMult[i + 1]
        let r = a.resolution >> i
        for j in 0...a.numResBlocks { resnet("decoder.up.\(i).block.\(j)", c, a.ch * a.chMult[i]); c = a.ch * a.chMult[i] }
        for j in 0...a.numResBlocks where a.attnResolutions.contains(r) { attn("decoder.up.\(i).attn.\(j)", c) }
        if i != 0 { conv("decoder.up.\(i).upsample.conv", c, c, 3) }
    }
    norm("decoder.norm_out", a.ch * a.chMult[0])
    conv("decoder.conv_out", a.ch * a.chMult[0], a.outCh, 3)
    conv("quant_conv", 2 * a.zChannels, 2 * a.embedDim, 1)
    conv("post_quant_conv", a.embedDim, a.zChannels, 1)
    return keys
}

/// A tiny architecture for fast tests: 8×8 input, f = 2, attention at 4×4.
func tinyArchitecture() -> AutoencoderArchitecture {
    var a = AutoencoderArchitecture()
    a.resolution = 8
    a.ch = 32            // GroupNorm's 32 groups need multiples of 32 channels
    a.chMult = [1, 2]
    a.numResBlocks = 1
    a.attnResolutions = [4]
    a.zChannels = 2
    a.embedDim = 2
    return a
}

@Suite("AutoencoderKL")
struct AutoencoderTests {
    @Test("parameter keys and shapes equal CompVis's for the reference and a tiny config, in state_dict order")
    func keysMatchCompVis() {
        for a in [AutoencoderArchitecture(), tinyArchitecture()] {
            let model = Autoencoder(a, seed: 1)
            let ours = model.namedParameters().map { ($0.key, $0.tensor.shape) }
            let theirs = compVisAutoencoderKeys(a)
            #expect(ours.map(\.0) == theirs.map(\.0))
            #expect(ours.map(\.1) == theirs.map(\.1))
        }
    }

    @Test("encode and decode shapes follow f and the channel counts")
    func shapes() {
        let a = tinyArchitecture()
        let model = Autoencoder(a, seed: 2)
        let x = randn([3, 8, 8, 1], 1)
        let posterior = withoutGradient { model.encode(x) }
        #expect(posterior.mean.shape == [3, 4, 4, 2])
        #expect(posterior.logvar.shape == [3, 4, 4, 2])
        #expect(withoutGradient { model.decode(posterior.mean) }.shape == [3, 8, 8, 1])
    }

    @Test("the same seed builds the same weights; another seed different ones")
    func seededInit() {
        let a = tinyArchitecture()
        let p1 = Autoencoder(a, seed: 5).parameters(), p2 = Autoencoder(a, seed: 5).parameters()
        let p3 = Autoencoder(a, seed: 6).parameters()
        #expect(zip(p1, p2).allSatisfy { $0.scalars == $1.scalars })
        #expect(zip(p1, p3).contains { $0.scalars != $1.scalars })
        // conv weights are U(−1/√fan_in, 1/√fan_in) as PyTorch's default
        let w = Autoencoder(a, seed: 5).namedParameters().first { $0.key == "encoder.down.1.block.0.conv1.weight" }!.tensor
        let bound = 1 / Float(32 * 9).squareRoot()
        #expect(w.scalars.allSatisfy { abs($0) <= bound })
        #expect(w.scalars.map { abs($0) }.max()! > 0.9 * bound)
    }

    @Test("gradient of Σ r ⊙ decode(sample(encode(x))) + KL with respect to x and to parameters")
    func gradients() {
        let model = Autoencoder(tinyArchitecture(), seed: 3)
        let noise = randn([2, 4, 4, 2], 9)
        let x = randn([2, 8, 8, 1], 4)
        func forward(_ x: Tensor) -> Tensor {
            let posterior = model.encode(x)
            return model.decode(posterior.sample(noise: noise)) + posterior.kl().reshaped([2, 1, 1, 1]).scaled(by: 0.01)
        }
        let toInput = gradCheck([x], directions: 3) { forward($0[0]) }
        #expect(toInput.worstError < 2e-3, "input: \(toInput)")
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.key, $0.tensor) })
        let weights = ["encoder.mid.attn_1.q.weight", "encoder.down.0.downsample.conv.weight", "quant_conv.bias",
                       "decoder.up.0.block.0.nin_shortcut.weight", "decoder.norm_out.weight"].map { named[$0]! }
        let toWeights = gradCheckInPlace(weights, directions: 3) { forward(x) }
        #expect(toWeights.worstError < 2e-3, "weights: \(toWeights)")
    }
}
