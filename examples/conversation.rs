//! Compress an image once, then reuse the reduced tokens for every turn of a conversation:
//! the language model reads `m` tokens per turn instead of `n`. The "language model" here is a
//! stand-in: each turn's question attends over the image tokens it is given.
//!
//! `cargo run --release --example conversation`

use metacompress::{Backend, Compressor, Features, Layout, Options, PMeta, Precision};

/// Softmax attention of `question` over `tokens` (rows of `width`): the answer vector.
fn attend(question: &[f32], tokens: &[f32], width: usize) -> Vec<f32> {
    let scores: Vec<f32> = tokens
        .chunks_exact(width)
        .map(|t| t.iter().zip(question).map(|(a, b)| a * b).sum::<f32>() / (width as f32).sqrt())
        .collect();
    let top = scores.iter().cloned().fold(f32::MIN, f32::max);
    let weights: Vec<f32> = scores.iter().map(|s| (s - top).exp()).collect();
    let total: f32 = weights.iter().sum();
    let mut answer = vec![0.0; width];
    for (w, t) in weights.iter().zip(tokens.chunks_exact(width)) {
        for (a, v) in answer.iter_mut().zip(t) {
            *a += w / total * v;
        }
    }
    answer
}

fn main() -> metacompress::Result<()> {
    let (tokens, width) = (576, 1024);
    // One image of 24 x 24 vision-tower tokens (a smooth stand-in pattern).
    let values: Vec<f32> = (0..tokens * width)
        .map(|i| {
            let (t, c) = (i / width, i % width);
            ((t / 24) as f32 * 0.3 + c as f32 * 0.01).sin() * ((t % 24) as f32 * 0.2).cos()
        })
        .collect();
    let image = Features::new(1, tokens, width, values)?;
    let layout = Layout::square(tokens)?;

    // Built once: the best device there is (the CPU path when the only GPU is software).
    let weights = PMeta::init(width, 64, Some((24, 24)), 1.0, 7)?;
    let compressor = Compressor::new(weights, Backend::Auto, None, Precision::F32)?;
    println!("compressor on {}", compressor.device());

    // Compressed once, when the image arrives.
    let reduced = compressor.compress(&image, &layout, &Options::default())?;
    let m = reduced.queries.count;
    println!("image: {tokens} tokens -> {m} reduced tokens, computed once");

    // Every turn reuses the same reduced tokens.
    let turns = [
        "What is in the picture?",
        "What colour is it?",
        "Where is it?",
    ];
    for (turn, prompt) in turns.iter().enumerate() {
        let question: Vec<f32> = (0..width)
            .map(|c| ((c * (turn + 2)) as f32 * 0.013).sin())
            .collect();
        let answer = attend(&question, &reduced.tokens, width);
        let full = attend(&question, image.values(), width);
        let agreement: f32 = answer.iter().zip(&full).map(|(a, b)| a * b).sum::<f32>()
            / (answer.iter().map(|a| a * a).sum::<f32>().sqrt()
                * full.iter().map(|b| b * b).sum::<f32>().sqrt());
        println!(
            "turn {}: {prompt:?} reads {m} image tokens instead of {tokens} \
             (answer cosine vs. all tokens: {agreement:.3})",
            turn + 1
        );
        if !agreement.is_finite() {
            return Err(metacompress::Error::InvalidArgument(
                "the answer is not finite".into(),
            ));
        }
    }
    Ok(())
}
