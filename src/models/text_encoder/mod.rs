//! The Qwen2.5-VL prompt encoder: tokenizer, image processor, vision tower and language model.
