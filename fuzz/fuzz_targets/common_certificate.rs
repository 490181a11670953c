#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sequester_custody::fuzz_entry::common_certificate(data));
