#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| diplo_fuzz::rest_scale_exec(data));
