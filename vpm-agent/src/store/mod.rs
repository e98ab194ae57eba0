//! Telemetry storage and export. For now: vpm's long CSV format.
pub mod long;
