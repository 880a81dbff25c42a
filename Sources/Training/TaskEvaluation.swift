import Datasets
import Distributed
import Foundation
import NN
import TensorEngine

/// An image task's model against its baseline on the test split: super-resolution
/// PSNR and SSIM against bicubic upsampling of the same low-resolution image;
/// inpainting PSNR inside the hole (and over the whole image) against filling the hole
/// with the image's mean visible colour. Every rank takes a contiguous share of the
/// images; image i's mask and noise depend on i alone, so the figures do not depend on
/// the number of ranks.
public enum TaskEvaluation {
    /// Metric names, model then baseline, for each task.
    static func names(_ kind: TaskKind) -> [String] {
        kind == .superResolution ? ["sr_psnr", "sr_ssim", "bicubic_psnr", "bicubic_ssim"]
            : ["inpaint_hole_psnr", "mean_fill_hole_psnr", "inpaint_psnr", "mean_fill_psnr"]
    }

    /// Mean metrics over the first `count` test images (every rank takes part).
    public static func run(task: ImageTask, sampler: LatentSampler, decoder: Autoencoder, scaleFactor: Double, test: ImageBatcher,
                           count: Int, communicator comm: Communicator) throws -> [String: Double] {
        let share = (comm.rank * count / comm.size)..<((comm.rank + 1) * count / comm.size)
        let crop = (top: (test.resolution - test.split.height) / 2, left: (test.resolution - test.split.width) / 2,
                    height: test.split.height, width: test.split.width)
        var sums = [Double](repeating: 0, count: 4), start = share.lowerBound
        while start < share.upperBound {
            let indices = Array(start..<min(share.upperBound, start + 64))
            let (x, condition, rows) = try testRows(task, test, indices, seed: sampler.sampling.seed, kind: sampler.stage.conditioning.kind)
            let latents = sampler.sample(conditions: rows, concat: task.concat(condition), firstIndex: indices[0])
            let y = LatentSampler.decode(latents, scaleFactor: scaleFactor, autoencoder: decoder), base = task.baseline(condition)
            var parts: [[Double]]
            switch condition {
            case .lowResolution:
                parts = [ImageMetrics.psnr(y, x, crop: crop), ImageMetrics.ssim(y, x, crop: crop),
                         ImageMetrics.psnr(base, x, crop: crop), ImageMetrics.ssim(base, x, crop: crop)]
            case let .masked(_, masks):
                parts = [ImageMetrics.maskedPSNR(y, x, masks: masks, crop: crop), ImageMetrics.maskedPSNR(base, x, masks: masks, crop: crop),
                         ImageMetrics.psnr(y, x, crop: crop), ImageMetrics.psnr(base, x, crop: crop)]
            }
            for (i, p) in parts.enumerated() { sums[i] += p.reduce(0, +) }
            start += indices.count
        }
        try sums.withUnsafeMutableBufferPointer { try comm.allReduceSum($0) }
        return Dictionary(uniqueKeysWithValues: zip(names(task.config.kind), sums.map { $0 / Double(max(count, 1)) }))
    }

    /// One line for the log: the model's figures beside the baseline's.
    public static func describe(_ m: [String: Double], kind: TaskKind, count: Int) -> String {
        let n = names(kind).map { m[$0] ?? .nan }
        return kind == .superResolution
            ? String(format: "super-resolution on %d test images: PSNR %.2f dB, SSIM %.4f; bicubic upsampling PSNR %.2f dB, SSIM %.4f "
                     + "(model − bicubic: %+.2f dB)", count, n[0], n[1], n[2], n[3], n[0] - n[2])
            : String(format: "inpainting on %d test images: PSNR inside the hole %.2f dB; mean-colour fill %.2f dB (model − fill: %+.2f dB); "
                     + "whole image %.2f dB against %.2f dB", count, n[0], n[1], n[0] - n[1], n[2], n[3])
    }

    /// Test rows `indices` as an image task sees them outside training, the same in
    /// grids, `sample --from-test` and evaluation: the images, their condition (masks of
    /// epoch 0 under the sampling seed) and what else conditions each row.
    static func testRows(_ task: ImageTask, _ test: ImageBatcher, _ indices: [Int], seed: Int, kind: ConditionKind) throws
        -> (images: Tensor, condition: ImageCondition, rows: [Condition]) {
        let x = try test.images(indices, epoch: nil)
        return (x, task.condition(for: x, indices: indices, epoch: 0, seed: seed), try rowConditions(kind, test.split, indices))
    }

    /// What conditions rows `indices` of a split besides the image: its class, its
    /// caption, or nothing (conditioning.kind none).
    static func rowConditions(_ kind: ConditionKind, _ split: DatasetSplit, _ indices: [Int]) throws -> [Condition] {
        switch kind {
        case .none: return [Condition](repeating: .none, count: indices.count)
        case .class: return indices.map { split.labels[$0] >= 0 ? .label(Int(split.labels[$0])) : .none }
        case .text: return try split.captions(indices).map(Condition.init(caption:))
        }
    }
}
