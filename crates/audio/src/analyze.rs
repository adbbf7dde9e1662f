//! What a recording is like: its levels, its loudness (ITU-R BS.1770, the
//! measure broadcasters and streaming services normalize to) and where
//! someone speaks.

use serde::Serialize;

use crate::Audio;

/// Frames of this length are judged speech or silence.
const FRAME_SECS: f64 = 0.03;
/// Silence shorter than this inside speech is a pause, not a gap.
const MIN_SILENCE_SECS: f64 = 0.3;
/// Below this level a frame is silence, however quiet the recording.
const SILENCE_FLOOR_DB: f64 = -50.0;
/// A frame this far below the loudest is silence.
const SPEECH_RANGE_DB: f64 = 35.0;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Analysis {
    pub duration_secs: f64,
    pub sample_rate: u32,
    pub channels: u16,
    /// The highest sample, in dB below full scale.
    pub peak_dbfs: f64,
    pub rms_dbfs: f64,
    /// Integrated loudness (BS.1770 K-weighted, gated); `None` when all of
    /// it is below the absolute gate (-70 LUFS): silence.
    pub loudness_lufs: Option<f64>,
    pub spans: Vec<Span>,
    pub speech_secs: f64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Speech,
    Silence,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Span {
    pub kind: SpanKind,
    pub start_secs: f64,
    pub end_secs: f64,
}

pub fn analyze(audio: &Audio) -> Analysis {
    let mono = audio.downmix();
    let peak = audio.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let spans = speech_spans(&mono);
    let speech_secs = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Speech)
        .map(|s| s.end_secs - s.start_secs)
        .sum();
    Analysis {
        duration_secs: audio.duration_secs(),
        sample_rate: audio.rate,
        channels: audio.channels,
        peak_dbfs: db(f64::from(peak)),
        rms_dbfs: db(rms(&audio.samples)),
        loudness_lufs: loudness(audio),
        spans,
        speech_secs,
    }
}

fn db(amplitude: f64) -> f64 {
    match amplitude > 0.0 {
        true => (20.0 * amplitude.log10()).max(-120.0),
        false => -120.0,
    }
}

fn rms(samples: &[f32]) -> f64 {
    match samples.len() {
        0 => 0.0,
        n => (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / n as f64).sqrt(),
    }
}

/// Runs of speech and silence, by each frame's level against the loudest.
fn speech_spans(mono: &Audio) -> Vec<Span> {
    let frame = ((mono.rate as f64 * FRAME_SECS) as usize).max(1);
    let levels: Vec<f64> = mono.samples.chunks(frame).map(|f| db(rms(f))).collect();
    let loudest = levels.iter().copied().fold(f64::MIN, f64::max);
    let threshold = SILENCE_FLOOR_DB.max(loudest - SPEECH_RANGE_DB);
    let secs = |frames: usize| (frames as f64 * FRAME_SECS).min(mono.duration_secs());
    let mut spans: Vec<Span> = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        let kind = match *level > threshold {
            true => SpanKind::Speech,
            false => SpanKind::Silence,
        };
        match spans.last_mut() {
            Some(last) if last.kind == kind => last.end_secs = secs(i + 1),
            _ => spans.push(Span {
                kind,
                start_secs: secs(i),
                end_secs: secs(i + 1),
            }),
        }
    }
    merge_short_pauses(spans)
}

/// A silence shorter than [`MIN_SILENCE_SECS`] between two speech spans
/// joins them.
fn merge_short_pauses(spans: Vec<Span>) -> Vec<Span> {
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        let is_pause = span.kind == SpanKind::Silence
            && span.end_secs - span.start_secs < MIN_SILENCE_SECS
            && merged.last().is_some_and(|s| s.kind == SpanKind::Speech);
        match merged.last_mut() {
            Some(last) if is_pause || last.kind == span.kind => last.end_secs = span.end_secs,
            _ => merged.push(span),
        }
    }
    merged
}

/// BS.1770-4 integrated loudness: K-weighting, mean square per 400 ms
/// block (75% overlap), the absolute gate at -70 LUFS, then the relative
/// gate 10 LU below the loudness of what passed.
fn loudness(audio: &Audio) -> Option<f64> {
    let channels = usize::from(audio.channels.max(1));
    let rate = f64::from(audio.rate);
    let weighted: Vec<Vec<f64>> = (0..channels)
        .map(|c| {
            let mut filter = KWeighting::new(rate);
            audio
                .samples
                .iter()
                .skip(c)
                .step_by(channels)
                .map(|s| filter.apply(f64::from(*s)))
                .collect()
        })
        .collect();
    let block = (0.4 * rate) as usize;
    let step = (0.1 * rate) as usize;
    let frames = audio.frames();
    if block == 0 || step == 0 || frames < block {
        return None;
    }
    let powers: Vec<f64> = (0..=(frames - block) / step)
        .map(|b| {
            weighted
                .iter()
                .map(|ch| {
                    ch[b * step..b * step + block]
                        .iter()
                        .map(|x| x * x)
                        .sum::<f64>()
                })
                .sum::<f64>()
                / block as f64
        })
        .collect();
    let lufs = |power: f64| -0.691 + 10.0 * power.log10();
    let mean = |ps: &[f64]| ps.iter().sum::<f64>() / ps.len() as f64;
    let loud: Vec<f64> = powers.into_iter().filter(|p| lufs(*p) > -70.0).collect();
    if loud.is_empty() {
        return None;
    }
    let relative = lufs(mean(&loud)) - 10.0;
    let gated: Vec<f64> = loud.into_iter().filter(|p| lufs(*p) > relative).collect();
    Some(lufs(mean(&gated)))
}

/// The two biquads of BS.1770's K-weighting, designed for any sample rate
/// (the standard gives coefficients for 48 kHz only).
struct KWeighting {
    stages: [Biquad; 2],
}

impl KWeighting {
    fn new(rate: f64) -> Self {
        Self {
            stages: [
                Biquad::high_shelf(
                    rate,
                    1_681.974_450_955_533,
                    3.999_843_853_973_347,
                    0.707_175_236_955_419_6,
                ),
                Biquad::high_pass(rate, 38.135_470_876_024_44, 0.500_327_037_323_877_3),
            ],
        }
    }

    fn apply(&mut self, x: f64) -> f64 {
        self.stages.iter_mut().fold(x, |x, stage| stage.apply(x))
    }
}

struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
    state: [f64; 2],
}

impl Biquad {
    fn high_shelf(rate: f64, f0: f64, gain_db: f64, q: f64) -> Self {
        let k = (std::f64::consts::PI * f0 / rate).tan();
        let vh = 10f64.powf(gain_db / 20.0);
        let vb = vh.powf(0.499_666_774_154_541_6);
        let a0 = 1.0 + k / q + k * k;
        Self::new(
            [
                (vh + vb * k / q + k * k) / a0,
                2.0 * (k * k - vh) / a0,
                (vh - vb * k / q + k * k) / a0,
            ],
            [2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0],
        )
    }

    fn high_pass(rate: f64, f0: f64, q: f64) -> Self {
        let k = (std::f64::consts::PI * f0 / rate).tan();
        let a0 = 1.0 + k / q + k * k;
        Self::new(
            [1.0, -2.0, 1.0],
            [2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0],
        )
    }

    fn new(b: [f64; 3], a: [f64; 2]) -> Self {
        Self {
            b,
            a,
            state: [0.0; 2],
        }
    }

    /// Transposed direct form II.
    fn apply(&mut self, x: f64) -> f64 {
        let y = self.b[0] * x + self.state[0];
        self.state[0] = self.b[1] * x - self.a[0] * y + self.state[1];
        self.state[1] = self.b[2] * x - self.a[1] * y;
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, amplitude: f64, secs: f64) -> Vec<f32> {
        (0..(f64::from(rate) * secs) as usize)
            .map(|i| {
                (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                    as f32
            })
            .collect()
    }

    #[test]
    fn a_full_scale_1khz_sine_reads_as_the_standard_says() {
        // BS.1770: a 0 dBFS 1 kHz sine in one channel reads -3.01 LUFS.
        let analysis = analyze(&Audio::mono(48_000, tone(48_000, 1000.0, 1.0, 3.0)));
        let lufs = analysis.loudness_lufs.unwrap();
        assert!((lufs + 3.01).abs() < 0.1, "{lufs}");
        assert!(analysis.peak_dbfs.abs() < 0.01);
        assert!((analysis.rms_dbfs + 3.01).abs() < 0.05);
    }

    #[test]
    fn finds_speech_between_silences() {
        let rate = 16_000;
        let mut samples = vec![0.0f32; rate as usize];
        samples.extend(tone(rate, 300.0, 0.3, 1.5));
        samples.extend(vec![0.0f32; rate as usize]);
        let analysis = analyze(&Audio::mono(rate, samples));
        let kinds: Vec<SpanKind> = analysis.spans.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [SpanKind::Silence, SpanKind::Speech, SpanKind::Silence]
        );
        let speech = &analysis.spans[1];
        assert!((speech.start_secs - 1.0).abs() < 0.04, "{speech:?}");
        assert!((speech.end_secs - 2.5).abs() < 0.04, "{speech:?}");
        assert!((analysis.duration_secs - 3.5).abs() < 1e-9);
    }

    #[test]
    fn silence_has_no_loudness() {
        let analysis = analyze(&Audio::mono(16_000, vec![0.0; 16_000]));
        assert_eq!(analysis.loudness_lufs, None);
        assert_eq!(analysis.speech_secs, 0.0);
    }
}
