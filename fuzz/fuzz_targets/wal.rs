#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::wal(data));
