//! How much of everything a run of the main job does, and what it aims at.

/// How much of everything a run does.
pub struct Profile {
    pub name: &'static str,
    pub phantoms: u64,
    pub classifier_steps: u64,
    /// The VQ-GAN preset: 8 x 8 codes per image, a quarter of the paper's 256, so each sample
    /// with an image costs far less to train on and each drawing is 64 codes.
    pub vqgan_preset: &'static str,
    pub vqgan_steps: u64,
    pub lm_steps: u64,
    /// Samples per fine-tuning step: a step has a fixed cost (the optimizer's pass over 163 M
    /// weights), so four short samples per step learn more per second than one.
    pub lm_micro_batch: usize,
    pub lm_lr: f64,
    /// The image rows' rate (embedding and head): fresh rows must travel far.
    pub lm_image_lr: f64,
    pub lm_warmup: u64,
    /// Questions per image, all in one sample's turns.
    pub vqa_per_image: usize,
    /// Share of plain text instructions (they keep the model's language and its stop).
    pub text_fraction: f64,
    /// Held-out evaluation every this many fine-tuning steps, and at the end. The warmup is
    /// fixed too, so that a run given more `--lm-steps` later continues the same curve.
    pub eval_every: u64,
    /// Held-out images per evaluation: each gets a report, a drawing from its report and
    /// `QUESTIONS_PER_IMAGE` questions.
    pub eval_images: usize,
}

pub const FULL: Profile = Profile {
    name: "full",
    phantoms: 2000,
    classifier_steps: 300,
    vqgan_preset: "demo-8x8",
    vqgan_steps: 1200,
    lm_steps: 200,
    lm_micro_batch: 4,
    lm_lr: 2e-4,
    lm_image_lr: 5e-3,
    lm_warmup: 10,
    vqa_per_image: 6,
    text_fraction: 0.1,
    eval_every: 100,
    eval_images: 64,
};

pub const QUICK: Profile = Profile {
    name: "quick",
    phantoms: 300,
    classifier_steps: 30,
    vqgan_preset: "demo-8x8",
    vqgan_steps: 150,
    lm_steps: 12,
    lm_micro_batch: 2,
    lm_lr: 2e-4,
    lm_image_lr: 5e-3,
    lm_warmup: 2,
    vqa_per_image: 6,
    text_fraction: 0.1,
    eval_every: 12,
    eval_images: 6,
};

pub const QUESTIONS_PER_IMAGE: usize = 3;

/// Plain instructions asked before and after fine-tuning: it must not forget language.
pub const PLAIN_INSTRUCTIONS: [&str; 2] = [
    "Give three tips for staying healthy.",
    "Explain in two sentences what a chest X-ray is used for.",
];
