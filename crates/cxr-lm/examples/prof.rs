use candle_core::{Device, Tensor};
use cxr_lm::*;
fn main() {
    let cfg = LmConfig::GptNeox(GptNeoxConfig { vocab_size: 51336, hidden_size: 512, num_hidden_layers: 6, num_attention_heads: 8, intermediate_size: 2048, rotary_pct: 0.25, rotary_emb_base: 1e4, max_position_embeddings: 2048, layer_norm_eps: 1e-5, use_parallel_residual: true, hidden_act: "gelu".into(), tie_word_embeddings: false, attention_bias: true });
    let t = weights::random_weights(&cfg, 0, None, &Device::Cpu).unwrap();
    let w = Weights::new(t, "r", WeightMode::Inference, &Device::Cpu);
    let m = CausalLm::new(&cfg, &w).unwrap();
    let ids: Vec<u32> = (0..300u32).map(|i| i * 31 % 50000).collect();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mode = std::env::var("MODE").unwrap_or("prefill".into());
    for _ in 0..20 {
        let s = std::time::Instant::now();
        let mut cache = m.new_cache(600);
        let h = m.step_hidden(&ids, &[0], &mut cache).unwrap();
        if mode == "prefill" { m.head().forward(&h).unwrap(); eprintln!("prefill {:?}", s.elapsed()); continue; }
        let one = Tensor::new(&[[5u32]], &Device::Cpu).unwrap();
        let s = std::time::Instant::now();
        for _ in 0..100 { let h = m.step_hidden(&one, &[0], &mut cache).unwrap(); m.head().forward(&h).unwrap(); }
        eprintln!("decode {:.1} tok/s", 100.0 / s.elapsed().as_secs_f64());
    }
}
