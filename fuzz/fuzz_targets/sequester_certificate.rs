#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sequester_custody::fuzz_entry::sequester_certificate(data));
