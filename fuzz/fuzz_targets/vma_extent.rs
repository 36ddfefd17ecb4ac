//! Extent header parsing: never panics; an accepted header's block accounting holds,
//! and re-encoding the accepted slots reproduces the input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdump_vma::{parse_extent_header, BlockInfo, EXTENT_HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() < EXTENT_HEADER_SIZE + 16 {
        return;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&data[..16]);
    let mut h = [0u8; EXTENT_HEADER_SIZE];
    h.copy_from_slice(&data[16..16 + EXTENT_HEADER_SIZE]);
    // Half of the inputs get a valid magic/uuid/md5 so the deeper checks are reached.
    if data.len() > EXTENT_HEADER_SIZE + 16 && data[EXTENT_HEADER_SIZE + 16] & 1 == 1 {
        h[..4].copy_from_slice(b"VMAE");
        h[8..24].copy_from_slice(&uuid);
        h[24..40].fill(0);
        use md5::Digest;
        let sum: [u8; 16] = md5::Md5::digest(h).into();
        h[24..40].copy_from_slice(&sum);
    }
    if let Ok((block_count, infos)) = parse_extent_header(&h, &uuid, 0, 0) {
        let counted: u32 = infos
            .iter()
            .filter(|b| b.dev_id() != 0)
            .map(|b| b.block_count())
            .sum();
        assert_eq!(counted, u32::from(block_count));
        for (i, b) in infos.iter().enumerate() {
            let at = 40 + 8 * i;
            assert_eq!(b.to_be(), h[at..at + 8]);
            let again = BlockInfo::new(b.mask(), b.dev_id(), b.cluster());
            assert_eq!(again.0 | (u64::from(b.reserved()) << 40), b.0);
        }
        assert_eq!(&h[..4], b"VMAE");
        assert_eq!(&h[8..24], &uuid);
    }
});
