//! The trained model as one engine: the language model, its image vocabulary, the VQ-GAN whose
//! codes it speaks and the phrasings. Every user of a trained model (`report`, `ask`, `draw`, the
//! server's scheduler, the main job's evaluation) goes through it: [`Engine::prepare`] turns a
//! [`Request`] into prompt ids and generation options, [`Engine::finish`] turns the generated ids
//! into an [`Answer`]. Generation itself (batched, or continuous in the server) stays with the
//! caller.

use candle_core::Tensor;
use cxr_lm::image_vocab::IMAGE_PLACEHOLDER;
use cxr_lm::{Constraint, GenerateOptions, ImageVocab, LanguageModel, LmError, Sampling};
use cxr_vqgan::VqModel;

use crate::template::{drawing_prompt, prompt};
use crate::Phrasings;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model and the VQ-GAN cannot work together.
    #[error("{0}")]
    Mismatch(String),
    /// The model drew something the VQ-GAN cannot decode.
    #[error("{0}")]
    Drawing(String),
    #[error(transparent)]
    Lm(#[from] LmError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("writing the PNG: {0}")]
    Png(#[from] image::ImageError),
}

/// One request to the model.
#[derive(Clone, Debug)]
pub enum Request {
    /// CXR -> report, from the image's codes; `instruction` defaults to the first of the
    /// CXR -> report phrasings.
    Report {
        codes: Vec<u32>,
        instruction: Option<String>,
    },
    /// A question about a CXR, from its codes.
    Ask { codes: Vec<u32>, question: String },
    /// Report -> CXR; `instruction` defaults to the first of the report -> CXR phrasings.
    Draw {
        report: String,
        instruction: Option<String>,
    },
    /// A plain instruction, already rendered in the model's template.
    Chat { prompt: String },
}

impl Request {
    /// Whether the answer is a drawing (image codes) rather than text.
    pub fn draws(&self) -> bool {
        matches!(self, Request::Draw { .. })
    }
}

/// What the model answered.
#[derive(Clone, Debug)]
pub enum Answer {
    Text(String),
    /// A drawn CXR: its codes (row-major grid) and the VQ-GAN's decoding of them.
    Image {
        codes: Vec<u32>,
        image: image::GrayImage,
    },
}

pub struct Engine {
    pub lm: LanguageModel,
    pub vocab: ImageVocab,
    pub vqgan: VqModel,
    pub phrasings: Phrasings,
}

impl Engine {
    /// A trained model and a VQ-GAN, checked to agree: the model has an image vocabulary and it
    /// has as many codes as the VQ-GAN's codebook.
    pub fn new(
        lm: LanguageModel,
        vqgan: VqModel,
        phrasings: Phrasings,
    ) -> Result<Self, EngineError> {
        let vocab = lm.image_vocab.ok_or_else(|| {
            EngineError::Mismatch(
                "the model has no image vocabulary: use a model trained by `llm-cxr train`".into(),
            )
        })?;
        if vqgan.config().n_embed as u32 != vocab.codes {
            return Err(EngineError::Mismatch(format!(
                "the VQ-GAN has {} codes but the model's image vocabulary {}",
                vqgan.config().n_embed,
                vocab.codes
            )));
        }
        Ok(Engine {
            lm,
            vocab,
            vqgan,
            phrasings,
        })
    }

    /// The codes of a batch of images, the VQ-GAN's input (B, C, H, W): one row per image.
    pub fn encode_images(&self, images: &Tensor) -> Result<Vec<Vec<u32>>, EngineError> {
        Ok(self.vqgan.encode(images)?.flatten_from(1)?.to_vec2()?)
    }

    /// The prompt's ids: LLM-CXR's template, with the image's codes in place of its placeholder.
    pub fn prompt_ids(&self, request: &Request) -> Result<Vec<u32>, EngineError> {
        let tokenizer = &self.lm.tokenizer;
        let with_image = |instruction: &str, codes: &[u32]| {
            let text = prompt(instruction, Some(IMAGE_PLACEHOLDER));
            self.vocab.encode_with_image(tokenizer, &text, codes)
        };
        Ok(match request {
            Request::Report { codes, instruction } => with_image(
                instruction
                    .as_deref()
                    .unwrap_or(&self.phrasings.cxr_to_report[0]),
                codes,
            )?,
            Request::Ask { codes, question } => with_image(question, codes)?,
            Request::Draw {
                report,
                instruction,
            } => tokenizer.encode(&drawing_prompt(
                instruction
                    .as_deref()
                    .unwrap_or(&self.phrasings.report_to_cxr[0]),
                report,
            ))?,
            Request::Chat { prompt } => tokenizer.encode(prompt)?,
        })
    }

    /// How to generate the answer: text never draws image ids and stops at the model's stop ids
    /// (at most `max_new_tokens`); a drawing is exactly one image's codes.
    pub fn options(
        &self,
        request: &Request,
        sampling: Sampling,
        max_new_tokens: usize,
    ) -> GenerateOptions {
        if request.draws() {
            let count = self.vqgan.config().tokens_per_image();
            GenerateOptions {
                sampling,
                constraint: Constraint::Image {
                    image_ids: self.vocab.ids(),
                    count,
                },
                max_new_tokens: count,
                stop_ids: Vec::new(),
            }
        } else {
            GenerateOptions {
                sampling,
                constraint: Constraint::Text {
                    image_ids: self.vocab.ids(),
                },
                max_new_tokens,
                stop_ids: self.lm.tokenizer.stop_ids(),
            }
        }
    }

    /// The prompt ids and generation options of a request.
    pub fn prepare(
        &self,
        request: &Request,
        sampling: Sampling,
        max_new_tokens: usize,
    ) -> Result<(Vec<u32>, GenerateOptions), EngineError> {
        Ok((
            self.prompt_ids(request)?,
            self.options(request, sampling, max_new_tokens),
        ))
    }

    /// The answer in the ids generated for `request` (a stop id included or not).
    pub fn finish(&self, request: &Request, ids: &[u32]) -> Result<Answer, EngineError> {
        if request.draws() {
            let (codes, image) = self.draw(ids)?;
            Ok(Answer::Image { codes, image })
        } else {
            Ok(Answer::Text(self.text(ids)?))
        }
    }

    /// Generated text ids as the answer's text: stop ids dropped, trimmed.
    fn text(&self, ids: &[u32]) -> Result<String, EngineError> {
        let stop = self.lm.tokenizer.stop_ids();
        let kept: Vec<u32> = ids.iter().copied().filter(|i| !stop.contains(i)).collect();
        Ok(self.lm.tokenizer.decode(&kept, true)?.trim().to_string())
    }

    /// Generated image ids as codes and the image the VQ-GAN decodes them to; exactly one image's
    /// worth of codes is required.
    pub fn draw(&self, ids: &[u32]) -> Result<(Vec<u32>, image::GrayImage), EngineError> {
        let count = self.vqgan.config().tokens_per_image();
        let codes: Vec<u32> = ids.iter().filter_map(|&id| self.vocab.code(id)).collect();
        if codes.len() != count {
            return Err(EngineError::Drawing(format!(
                "the model drew {} image codes, the VQ-GAN needs {count}",
                codes.len()
            )));
        }
        let idx = Tensor::from_vec(codes.clone(), (1, count), self.vqgan.device())?;
        let image = cxr_vqgan::to_gray_images(&self.vqgan.decode(&idx)?)?.remove(0);
        Ok((codes, image))
    }
}

/// PNG bytes of a grayscale image.
pub fn png_bytes(image: &image::GrayImage) -> Result<Vec<u8>, EngineError> {
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}
