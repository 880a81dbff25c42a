import NN

/// The model config CompVis's code instantiates (`instantiate_from_config(yaml.model)`)
/// for an exported file: the same modules with the same hyperparameters, so that
/// `load_state_dict(safetensors.torch.load_file(F), strict=True)` fits.
enum CompVisModelConfig {
    static func yaml(layout: ExportLayout, config: Config, scaleFactor: Double) -> String {
        let lines = layout == .autoencoder ? autoencoder(config, lossOf: config.autoencoder) : latentDiffusion(config, scaleFactor: scaleFactor)
        return "# CompVis latent-diffusion model config for the weights beside it, written by ldm-train export.\n"
            + lines.joined(separator: "\n") + "\n"
    }

    static func list(_ values: [Int]) -> String { "[" + values.map(String.init).joined(separator: ", ") + "]" }

    /// AutoencoderKL or VQModel (VQModelInterface as a LatentDiffusion's first stage);
    /// `lossOf`: stage 1's own export keeps the discriminator's loss config, a
    /// LatentDiffusion's first stage gets CompVis's `torch.nn.Identity`.
    static func autoencoder(_ config: Config, lossOf stage: AutoencoderStageConfig?) -> [String] {
        let a = config.autoencoder.model, vq = config.autoencoder.kind == .vq
        let target = vq ? (stage == nil ? "VQModelInterface" : "VQModel") : "AutoencoderKL"
        var out = ["model:",
                   "  base_learning_rate: \(config.autoencoder.optimizer.baseLR)",
                   "  target: ldm.models.autoencoder.\(target)",
                   "  params:",
                   "    embed_dim: \(a.embedDim)"]
        if vq { out.append("    n_embed: \(a.nEmbed)") }
        out += ["    monitor: val/rec_loss",
                   "    ddconfig:",
                   "      double_z: \(a.doubleZ)",
                   "      z_channels: \(a.zChannels)",
                   "      resolution: \(a.resolution)",
                   "      in_channels: \(a.inChannels)",
                   "      out_ch: \(a.outCh)",
                   "      ch: \(a.ch)",
                   "      ch_mult: \(list(a.chMult))",
                   "      num_res_blocks: \(a.numResBlocks)",
                   "      attn_resolutions: \(list(a.attnResolutions))",
                   "      dropout: 0.0",
                   "    lossconfig:"]
        if let l = stage?.loss, l.discEnabled {
            out += ["      target: ldm.modules.losses.\(vq ? "vqperceptual.VQLPIPSWithDiscriminator" : "LPIPSWithDiscriminator")",
                    "      params:",
                    "        disc_start: \(l.discStart)",
                    vq ? "        codebook_weight: \(l.codebookWeight)" : "        kl_weight: \(l.klWeight)",
                    "        disc_weight: \(l.discWeight)",
                    "        disc_in_channels: \(a.outCh)",
                    "        disc_num_layers: \(l.discLayers)",
                    "        disc_ndf: \(l.discChannels)",
                    "        perceptual_weight: 0.0   # SwiftLDM trains without LPIPS: its weights are not in the file"]
        } else {
            out += ["      target: torch.nn.Identity"]
        }
        return out
    }

    static func latentDiffusion(_ config: Config, scaleFactor: Double) -> [String] {
        let s = config.diffusion, u = s.model, c = s.conditioning
        let betaSchedule: String
        switch s.schedule.kind {
        case .scaledLinear: betaSchedule = "linear"   // CompVis's "linear" is linear in √β
        case .linear: betaSchedule = "sqrt_linear"    // and its "sqrt_linear" linear in β
        case .cosine: betaSchedule = "cosine"
        }
        let conditionKey: String
        switch c.kind {
        case .class: conditionKey = "class_label"
        case .text: conditionKey = "caption"
        case .none: conditionKey = "image"
        }
        var out = ["model:",
                   "  base_learning_rate: \(s.optimizer.baseLR)",
                   "  target: ldm.models.diffusion.ddpm.LatentDiffusion",
                   "  params:",
                   "    linear_start: \(s.schedule.betaStart)",
                   "    linear_end: \(s.schedule.betaEnd)",
                   "    beta_schedule: \(betaSchedule)",
                   "    timesteps: \(s.schedule.timesteps)",
                   "    parameterization: \(s.prediction == .epsilon ? "eps" : "v")",
                   "    first_stage_key: image",
                   "    cond_stage_key: \(conditionKey)",
                   "    image_size: \(u.imageSize)",
                   "    channels: \(u.outChannels)",
                   "    cond_stage_trainable: \(c.kind != .none)",
                   "    conditioning_key: \(c.key.rawValue)",
                   "    scale_factor: \(scaleFactor)",
                   "    use_ema: false   # the file holds one set of weights (the EMA's with --ema)",
                   "    monitor: val/loss_simple_ema",
                   "    unet_config:",
                   "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel",
                   "      params:",
                   "        image_size: \(u.imageSize)",
                   "        in_channels: \(u.inChannels)",
                   "        out_channels: \(u.outChannels)",
                   "        model_channels: \(u.modelChannels)",
                   "        attention_resolutions: \(list(u.attentionResolutions))",
                   "        num_res_blocks: \(u.numResBlocks)",
                   "        channel_mult: \(list(u.channelMult))",
                   "        num_head_channels: \(u.numHeadChannels)",
                   "        use_spatial_transformer: \(c.kind != .none)",
                   "        transformer_depth: \(u.transformerDepth)",
                   "        context_dim: \(u.contextDim)",
                   "        use_checkpoint: false",
                   "        legacy: false",
                   "    first_stage_config:"]
        out += autoencoder(config, lossOf: nil).dropFirst(2).map { "    " + $0 }
        out.append("    cond_stage_config:")
        switch c.kind {
        case .class:
            out += ["      target: ldm.modules.encoders.modules.ClassEmbedder",
                    "      params:",
                    "        embed_dim: \(u.contextDim)",
                    "        n_classes: \(u.numClasses + 1)   # the classes and, last, the null class of classifier-free guidance",
                    "        key: class_label"]
        case .text:
            out += ["      target: ldm.modules.encoders.modules.TransformerEmbedder",
                    "      params:",
                    "        n_embed: \(u.contextDim)",
                    "        n_layer: \(c.text.nLayer)",
                    "        vocab_size: \(c.text.vocabSize)",
                    "        max_seq_len: \(c.text.maxSeqLen)   # tokens come from the byte-level BPE in the file's metadata",
                    "      # attention: \(c.text.heads) heads × \(u.contextDim / c.text.heads); CompVis's class builds x-transformers' default 8 × 64,",
                    "      # so build its TransformerWrapper with Encoder(dim=\(u.contextDim), depth=\(c.text.nLayer), heads=\(c.text.heads), "
                        + "dim_head=\(u.contextDim / c.text.heads)) to load these weights.",
                    "      # SwiftLDM masks padded tokens in τθ and cross-attention; CompVis attends to them."]
        case .none:
            out += ["      target: __is_unconditional__"]
        }
        return out
    }
}
