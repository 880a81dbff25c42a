import Datasets
import NN
import Storage
import TensorEngine

extension CheckpointTensor {
    /// A model's checkpoint tensors, in declaration order: `params/<key>`, Adam's
    /// `optim/m/<key>` and `optim/v/<key>`, and `ema/<key>` when there is an EMA,
    /// each a view into its arena (so saving and loading copy nothing else).
    static func arenaViews(_ arena: ParameterArena, optimizer: Adam, ema: EMA?) -> [CheckpointTensor] {
        var out: [CheckpointTensor] = []
        for e in arena.declarationOrder {
            out.append(CheckpointTensor(key: path("params", e.key), shape: e.tensor.shape, pointer: arena.values.pointer + e.offset))
            out.append(CheckpointTensor(key: path("optim/m", e.key), shape: e.tensor.shape, pointer: optimizer.m.pointer + e.offset))
            out.append(CheckpointTensor(key: path("optim/v", e.key), shape: e.tensor.shape, pointer: optimizer.v.pointer + e.offset))
            if let ema {
                out.append(CheckpointTensor(key: path("ema", e.key), shape: e.tensor.shape, pointer: ema.shadow.pointer + e.offset))
            }
        }
        return out
    }

    /// Module state that is not a parameter (`buffers/<key>`: BatchNorm's running statistics).
    static func bufferViews(_ buffers: [StateTensor]) -> [CheckpointTensor] {
        buffers.map { CheckpointTensor(key: path("buffers", $0.key), shape: $0.shape.isEmpty ? [1] : $0.shape, pointer: $0.pointer) }
    }

    /// Only the parameters (`params/<key>`), for loading a frozen model.
    static func parameterViews(_ arena: ParameterArena, group: String = "params") -> [CheckpointTensor] {
        arena.declarationOrder.map { CheckpointTensor(key: path(group, $0.key), shape: $0.tensor.shape, pointer: arena.values.pointer + $0.offset) }
    }
}

/// The permutation of the current epoch, recomputed when the epoch changes.
final class EpochOrder {
    private var epoch = -1
    private var order: [Int] = []
    let count: Int, seed: Int

    init(count: Int, seed: Int) { (self.count, self.seed) = (count, seed) }

    func callAsFunction(_ e: Int) -> [Int] {
        if e != epoch {
            order = epochPermutation(count: count, seed: seed, epoch: e)
            epoch = e
        }
        return order
    }
}
