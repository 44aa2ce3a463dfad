//! The edit pipelines (`QwenImageEditPipeline`, `QwenImageEditPlusPipeline`): the scheduler, seeded
//! noise, latent packing and the denoising loop that joins the models.

pub mod edit;
pub mod latents;
pub mod layout;
pub mod lightning;
pub mod memory;
pub mod noise;
pub mod scheduler;
