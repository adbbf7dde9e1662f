use std::io::Cursor;

use crate::{Audio, AudioError};

/// 16-bit PCM WAV, what every player and speech API reads.
pub fn encode_wav(audio: &Audio) -> Result<Vec<u8>, AudioError> {
    let spec = hound::WavSpec {
        channels: audio.channels,
        sample_rate: audio.rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + audio.samples.len() * 2));
    let failed = |e: hound::Error| AudioError::Invalid(format!("cannot write WAV: {e}"));
    let mut writer = hound::WavWriter::new(&mut out, spec).map_err(failed)?;
    for &sample in &audio.samples {
        let pcm = (sample.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
        writer.write_sample(pcm).map_err(failed)?;
    }
    writer.finalize().map_err(failed)?;
    Ok(out.into_inner())
}

/// A 16-bit PCM WAV written to a pipe (espeak-ng's `--stdout`): its length
/// fields could not be filled in, so they are ignored and every byte after
/// the canonical 44-byte header is taken as samples.
pub fn decode_streamed_wav(bytes: &[u8]) -> Result<Audio, AudioError> {
    let damaged = |why: &str| AudioError::Damaged(format!("streamed WAV: {why}"));
    if bytes.len() < 44 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(damaged("no RIFF/WAVE header"));
    }
    if &bytes[12..16] != b"fmt " || &bytes[36..40] != b"data" {
        return Err(damaged("not the canonical 44-byte header"));
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let (format, channels, bits) = (u16_at(20), u16_at(22), u16_at(34));
    let rate = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if format != 1 || bits != 16 || channels == 0 || rate == 0 {
        return Err(damaged("not 16-bit PCM"));
    }
    let samples = bytes[44..]
        .chunks_exact(2)
        .map(|pair| f32::from(i16::from_le_bytes([pair[0], pair[1]])) / 32768.0)
        .collect();
    Ok(Audio {
        rate,
        channels,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_wav_is_read_whatever_its_length_fields_say() {
        let audio = Audio::mono(22_050, vec![0.5, -0.5, 0.25]);
        let mut wav = encode_wav(&audio).unwrap();
        wav[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        wav[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let read = decode_streamed_wav(&wav).unwrap();
        assert_eq!((read.rate, read.channels, read.frames()), (22_050, 1, 3));
        assert!((read.samples[1] + 0.5).abs() < 1e-3);
        assert!(decode_streamed_wav(b"RIFF....WAVEfmt ").is_err());
    }
}
