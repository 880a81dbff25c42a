import TensorEngine

/// The stage-2 training objective (DDPM's simple loss, Ho et al. 2020 eq. 14):
/// z_t = q_sample(z_0, t, ε), and the mean squared error between the model's output
/// and ε (or v) per sample. The trainer and the benchmarks call this one function.
public struct DiffusionObjective: Sendable {
    public let schedule: NoiseSchedule
    public let prediction: Prediction
    public init(schedule: NoiseSchedule, prediction: Prediction) { (self.schedule, self.prediction) = (schedule, prediction) }

    /// Per-sample losses [N] (on the tape) of `model` (z_t, t → output) for latents
    /// z0 [N, ...], noise of z0's shape and per-sample `times`.
    public func perSampleLoss(z0: Tensor, noise: Tensor, times: [Int], model: (Tensor, [Int]) -> Tensor) -> Tensor {
        let xt = schedule.qSample(z0, t: times, noise: noise)
        let target = prediction == .epsilon ? noise : schedule.velocity(z0, t: times, noise: noise)
        let diff = model(xt, times) - target
        return (diff * diff).mean(axes: Array(1..<z0.rank))
    }
}
