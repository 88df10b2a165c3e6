//! The recorder plugin: writes each recorded call to `<call-id>.wav` in its data directory,
//! 8 kHz 16-bit stereo, the caller on the left channel and the callee on the right. A DTMF
//! key pauses the recording (silence is written instead, so the timeline stays true) and
//! another resumes it, so an agent can keep card numbers out of recordings (PCI DSS).
//!
//! Configuration (JSON):
//! ```json
//! { "record": "all", "pause_key": "*", "resume_key": "#" }
//! ```
//! `record`: `all` marks every call for recording; `marked` (the default) records only
//! calls another plugin marked `record_audio`.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

use gateway_plugin_sdk::{
    AudioFrame, CallInfo, Event, Level, Manifest, Plugin, Verdict, export_plugin, host,
};

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    record_all: bool,
    pause_key: String,
    resume_key: String,
}

impl Settings {
    /// Reads the JSON configuration, naming the field that is wrong.
    pub fn parse(config: &str) -> Result<Settings, String> {
        let v: serde_json::Value = serde_json::from_str(config)
            .map_err(|e| format!("recorder config is not JSON: {e}"))?;
        let key = |field: &str, default: &str| -> Result<String, String> {
            match v.get(field) {
                None => Ok(default.into()),
                Some(serde_json::Value::String(k))
                    if k.len() == 1 && "0123456789*#ABCD".contains(k.as_str()) =>
                {
                    Ok(k.clone())
                }
                Some(_) => Err(format!(
                    "recorder config: `{field}` must be one DTMF key (0-9, *, #, A-D)"
                )),
            }
        };
        let record_all = match v.get("record").and_then(|r| r.as_str()) {
            None | Some("marked") => false,
            Some("all") => true,
            Some(other) => {
                return Err(format!(
                    "recorder config: `record` is `all` or `marked`, not `{other}`"
                ));
            }
        };
        let settings = Settings {
            record_all,
            pause_key: key("pause_key", "*")?,
            resume_key: key("resume_key", "#")?,
        };
        if settings.pause_key == settings.resume_key {
            return Err("recorder config: `pause_key` and `resume_key` must differ".into());
        }
        Ok(settings)
    }
}

/// A stereo 16-bit WAV file being written; the header's sizes are filled in at the end.
pub struct Wav {
    out: BufWriter<File>,
    frames: u32,
}

impl Wav {
    const RATE: u32 = 8000;

    /// Creates the file and writes a header for an empty recording.
    pub fn create(path: &std::path::Path) -> std::io::Result<Wav> {
        let mut wav = Wav {
            out: BufWriter::new(File::create(path)?),
            frames: 0,
        };
        wav.write_header()?;
        Ok(wav)
    }

    fn write_header(&mut self) -> std::io::Result<()> {
        let data_bytes = self.frames * 4;
        let mut h = Vec::with_capacity(44);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(36 + data_bytes).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes()); // PCM
        h.extend_from_slice(&2u16.to_le_bytes()); // stereo
        h.extend_from_slice(&Self::RATE.to_le_bytes());
        h.extend_from_slice(&(Self::RATE * 4).to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data_bytes.to_le_bytes());
        self.out.write_all(&h)
    }

    /// Appends samples, left and right interleaved; the shorter side is padded with silence.
    pub fn append(&mut self, left: &[i16], right: &[i16]) -> std::io::Result<()> {
        let n = left.len().max(right.len());
        let mut buf = Vec::with_capacity(n * 4);
        for i in 0..n {
            buf.extend_from_slice(&left.get(i).copied().unwrap_or(0).to_le_bytes());
            buf.extend_from_slice(&right.get(i).copied().unwrap_or(0).to_le_bytes());
        }
        self.frames += n as u32;
        self.out.write_all(&buf)
    }

    /// Fills in the sizes and flushes.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.seek(SeekFrom::Start(0))?;
        self.write_header()?;
        self.out.flush()
    }
}

/// The plugin: one per call.
pub struct Recorder {
    settings: Settings,
    wav: Option<Wav>,
    paused: bool,
    failed: bool,
}

impl Recorder {
    fn fail(&mut self, what: &str, e: std::io::Error) {
        host::log(Level::Error, &format!("recording {what}: {e}"));
        host::counter("errors", 1);
        self.failed = true;
        self.wav = None;
    }
}

impl Plugin for Recorder {
    fn manifest() -> Manifest {
        Manifest {
            audio: true,
            data_dir: true,
        }
    }

    fn init(config: &str) -> Result<Self, String> {
        Ok(Recorder {
            settings: Settings::parse(config)?,
            wav: None,
            paused: false,
            failed: false,
        })
    }

    fn on_call_start(&mut self, _call: &CallInfo) -> Verdict {
        if self.settings.record_all {
            let mut route = gateway_plugin_sdk::route();
            route.record_audio = true;
            Verdict::Route(route)
        } else {
            Verdict::Continue
        }
    }

    fn on_event(&mut self, _call_id: &str, event: &Event) {
        match event {
            Event::Dtmf((_, key)) if *key == self.settings.pause_key && !self.paused => {
                self.paused = true;
                host::counter("pauses", 1);
            }
            Event::Dtmf((_, key)) if *key == self.settings.resume_key => self.paused = false,
            Event::Ended(_) => {
                if let Some(wav) = self.wav.take() {
                    match wav.finish() {
                        Ok(()) => host::counter("recordings", 1),
                        Err(e) => self.fail("could not be finished", e),
                    }
                }
            }
            _ => {}
        }
    }

    fn on_audio(&mut self, call_id: &str, frame: &AudioFrame) {
        if self.failed {
            return;
        }
        if self.wav.is_none() {
            // Call IDs come from the gateway (letters, digits, `-`); keep file names plain.
            let name: String = call_id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let path = gateway_plugin_sdk::data_dir().join(format!("{name}.wav"));
            match Wav::create(&path) {
                Ok(wav) => self.wav = Some(wav),
                Err(e) => return self.fail("could not be created", e),
            }
        }
        let silence = [0i16; 160];
        let result = match (&mut self.wav, self.paused) {
            (Some(wav), true) => wav.append(&silence, &silence),
            (Some(wav), false) => wav.append(&frame.caller, &frame.callee),
            (None, _) => Ok(()),
        };
        if let Err(e) = result {
            self.fail("could not be written", e);
        }
    }
}

export_plugin!(Recorder);

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_plugin_sdk::{CallEnd, Party, mock};

    fn ended() -> Event {
        Event::Ended(CallEnd {
            reason: "hangup".into(),
            sip_code: 200,
            duration_ms: 60,
            trunk: None,
            sip_call_id: None,
            started_ms: 0,
            answered_ms: None,
        })
    }

    #[test]
    fn records_both_sides_and_silence_while_paused() {
        let dir = std::env::temp_dir().join(format!("recorder-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        mock::set_data_dir(&dir);
        let mut r = Recorder::init(r#"{"record":"all"}"#).unwrap();
        assert!(matches!(
            r.on_call_start(&mock::call("alice", "+4930")),
            Verdict::Route(ref route) if route.record_audio
        ));
        let frame = |l: i16, rr: i16| AudioFrame {
            caller: vec![l; 160],
            callee: vec![rr; 160],
        };
        r.on_audio("c-1", &frame(1, 2));
        r.on_event("c-1", &Event::Dtmf((Party::Caller, "*".into())));
        r.on_audio("c-1", &frame(3, 4));
        r.on_event("c-1", &Event::Dtmf((Party::Caller, "#".into())));
        r.on_audio("c-1", &frame(5, 6));
        r.on_event("c-1", &ended());
        let bytes = std::fs::read(dir.join("c-1.wav")).unwrap();
        assert_eq!(&bytes[..4], b"RIFF");
        assert_eq!(
            u32::from_le_bytes(bytes[40..44].try_into().unwrap()),
            3 * 160 * 4
        );
        let sample = |i: usize| i16::from_le_bytes([bytes[44 + 2 * i], bytes[45 + 2 * i]]);
        assert_eq!((sample(0), sample(1)), (1, 2));
        assert_eq!((sample(320), sample(321)), (0, 0), "paused: silence");
        assert_eq!((sample(640), sample(641)), (5, 6));
        assert_eq!(mock::counter("recordings"), 1);
        assert_eq!(mock::counter("pauses"), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_configuration_names_the_field() {
        assert!(
            Settings::parse(r#"{"record":"some"}"#)
                .unwrap_err()
                .contains("`record`")
        );
        assert!(
            Settings::parse(r#"{"pause_key":"**"}"#)
                .unwrap_err()
                .contains("pause_key")
        );
        assert!(
            Settings::parse(r##"{"pause_key":"#"}"##)
                .unwrap_err()
                .contains("must differ")
        );
    }
}
