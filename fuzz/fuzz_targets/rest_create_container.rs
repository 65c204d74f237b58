#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| diplo_fuzz::rest_create_container(data));
