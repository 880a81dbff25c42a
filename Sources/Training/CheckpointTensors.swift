import Distributed
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

/// Gradient buckets over `arena` (each parameter reports readiness by its index
/// in the arena's layout).
func makeSynchronizer(_ arena: ParameterArena, _ config: DistributedConfig, _ comm: Communicator) -> GradientSynchronizer {
    for (i, e) in arena.entries.enumerated() { e.tensor.readyIndex = i }
    return GradientSynchronizer(gradients: arena.gradients.pointer, parameters: arena.entries.map { ($0.offset, $0.tensor.count) },
                                arenaCount: arena.count, communicator: comm,
                                firstBucketBytes: Int(config.firstBucketMiB * 1_048_576), bucketBytes: Int(config.bucketMiB * 1_048_576),
                                overlap: config.overlap)
}

/// The watchdog's deadline: the configured seconds, or max(120 s, 20× the median of
/// the recent step times).
func setWatchdog(_ config: DistributedConfig, _ stepSeconds: [Double], _ comm: Communicator) {
    guard let mpi = comm as? MPICommunicator else { return }
    if config.watchdogSeconds > 0 {
        mpi.deadline = config.watchdogSeconds
    } else {
        let recent = stepSeconds.suffix(50).sorted()
        mpi.deadline = max(120, 20 * (recent.isEmpty ? 0 : recent[recent.count / 2]))
    }
}
