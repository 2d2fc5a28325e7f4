#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hrrt_server::fuzz::claims(data));
