use std::io::{Cursor, ErrorKind};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as Symphonia;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::{Audio, AudioError};

/// What a caller may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Longest audio accepted, in seconds.
    pub max_seconds: f64,
}

/// Decode a whole file held in memory. A file whose header announces more
/// than its data holds is refused as truncated rather than transcribed in
/// part: the caller would not know what was left out.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Audio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| AudioError::Unsupported(describe(&e)))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::Unsupported("no audio track".into()))?;
    let params = track.codec_params.clone();
    let track_id = track.id;
    let rate = params
        .sample_rate
        .filter(|r| *r > 0)
        .ok_or_else(|| AudioError::Damaged("no sample rate".into()))?;
    let channels = params.channels.map_or(1, |c| c.count()) as u16;
    let announced = params.n_frames.map(|n| n as f64 / f64::from(rate));
    if let Some(secs) = announced {
        check_length(secs, limits)?;
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported(describe(&e)))?;
    let max_samples = (limits.max_seconds * f64::from(rate) * f64::from(channels.max(1))) as usize;
    let mut samples: Vec<f32> = Vec::new();
    let mut damaged = 0usize;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(Symphonia::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(AudioError::Damaged(describe(&e))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                let mut buffer =
                    SampleBuffer::<f32>::new(decoded.capacity() as u64, *decoded.spec());
                buffer.copy_interleaved_ref(decoded);
                samples.extend_from_slice(buffer.samples());
            }
            // A damaged frame of a compressed stream: skipped, as players do,
            // unless most of the stream is like it.
            Err(Symphonia::DecodeError(_)) => damaged += 1,
            Err(e) => return Err(AudioError::Damaged(describe(&e))),
        }
        if samples.len() > max_samples {
            let secs = samples.len() as f64 / f64::from(rate) / f64::from(channels.max(1));
            return Err(AudioError::TooLong {
                secs,
                max_secs: limits.max_seconds,
            });
        }
    }
    let audio = Audio {
        rate,
        channels,
        samples,
    };
    if audio.frames() == 0 {
        return Err(match damaged {
            0 => AudioError::Empty,
            n => AudioError::Damaged(format!("none of its {n} frames decodes")),
        });
    }
    if let Some(announced_secs) = announced {
        let held_secs = audio.duration_secs();
        // A codec's last frame may be padded: a few milliseconds either way are the format's.
        if held_secs + 0.05 < announced_secs {
            return Err(AudioError::Truncated {
                announced_secs,
                held_secs,
            });
        }
    }
    Ok(audio)
}

fn check_length(secs: f64, limits: &Limits) -> Result<(), AudioError> {
    match secs > limits.max_seconds {
        true => Err(AudioError::TooLong {
            secs,
            max_secs: limits.max_seconds,
        }),
        false => Ok(()),
    }
}

fn describe(error: &Symphonia) -> String {
    match error {
        Symphonia::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => "it ends early".into(),
        Symphonia::Unsupported(what) => format!("unsupported {what}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_wav;

    const LIMITS: Limits = Limits { max_seconds: 60.0 };

    fn stereo_wav(secs: f32) -> Vec<u8> {
        let n = (8000.0 * secs) as usize;
        let samples = (0..n)
            .flat_map(|i| {
                let s = (i as f32 * 0.05).sin() * 0.25;
                [s, -s]
            })
            .collect();
        encode_wav(&Audio {
            rate: 8000,
            channels: 2,
            samples,
        })
        .unwrap()
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let audio = decode(&stereo_wav(1.5), &LIMITS).unwrap();
        assert_eq!(
            (audio.rate, audio.channels, audio.frames()),
            (8000, 2, 12_000)
        );
        assert!((audio.samples[2] - (0.05f32).sin() * 0.25).abs() < 1e-3);
        // Opposite channels cancel when mixed down.
        assert!(audio.downmix().samples.iter().all(|s| s.abs() < 1e-3));
    }

    #[test]
    fn a_truncated_file_says_how_much_is_missing() {
        let wav = stereo_wav(2.0);
        let error = decode(&wav[..wav.len() / 2], &LIMITS).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, AudioError::Truncated { .. }), "{message}");
        assert!(message.contains("2.00 s"), "{message}");
    }

    #[test]
    fn too_long_is_refused_before_decoding() {
        let error = decode(&stereo_wav(3.0), &Limits { max_seconds: 2.0 }).unwrap_err();
        assert!(error.to_string().contains("at most 2.0 s"), "{error}");
    }

    #[test]
    fn not_audio_is_refused() {
        assert!(matches!(
            decode(b"this is plain text, not a sound", &LIMITS),
            Err(AudioError::Unsupported(_))
        ));
        assert!(matches!(decode(b"", &LIMITS), Err(AudioError::Empty)));
    }
}
