#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| diplo_fuzz::output_chunk(data));
