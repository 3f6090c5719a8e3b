#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_fuzzing::node_api(data));
