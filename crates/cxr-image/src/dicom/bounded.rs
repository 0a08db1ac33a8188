//! dicom-parser's own decoder, with every declared length checked before it is used.
//!
//! dicom-parser reserves and zero-fills a value's declared length before reading it, so one
//! corrupt length field costs up to 4 GiB. An earlier guard walked the element headers itself,
//! but any place where its reading of a file differed from dicom-parser's (an item tag outside a
//! sequence, a partial binary value, where a defined-length sequence ends) let a length through
//! unchecked; the fuzzer found such places one after another. Here the check sits inside the
//! parser's reading instead: [`BoundedDecoder`] wraps the stateful decoder that dicom-parser's
//! data set reader drives, so every header and item length is seen exactly as dicom-parser reads
//! it, and refused when it runs past the end of the data set, before any value is read.

use std::cell::RefCell;
use std::io::Seek;

use dicom_core::header::{DataElementHeader, HasLength, Header, SequenceItemHeader, VR};
use dicom_core::PrimitiveValue;
use dicom_parser::stateful::decode::{Error, Result, StatefulDecode};

/// The largest Basic Offset Table accepted: one 4-byte offset per frame, at most
/// [`super::MAX_FRAMES`] frames. dicom-parser reserves four times its byte length.
const MAX_OFFSET_TABLE_BYTES: u32 = 4 * super::MAX_FRAMES;

/// A [`StatefulDecode`] over `data_set_len` bytes that refuses, before reading the value, any
/// element or item whose declared length runs past the end, a binary value that is not whole
/// values, and an oversized offset table. The reason lands in `refusal` (the error dicom-parser
/// passes up names only a position).
pub(super) struct BoundedDecoder<'r, D> {
    inner: D,
    data_set_len: u64,
    /// The header just read was encapsulated pixel data: the next item is its offset table.
    offset_table_next: bool,
    refusal: &'r RefCell<Option<String>>,
}

impl<'r, D: StatefulDecode> BoundedDecoder<'r, D> {
    pub(super) fn new(inner: D, data_set_len: u64, refusal: &'r RefCell<Option<String>>) -> Self {
        Self {
            inner,
            data_set_len,
            offset_table_next: false,
            refusal,
        }
    }

    fn remaining(&self) -> u64 {
        self.data_set_len.saturating_sub(self.inner.position())
    }

    fn refuse(&self, reason: String) -> Error {
        let position = self.inner.position();
        *self.refusal.borrow_mut() = Some(reason.clone());
        Error::ReadValueData {
            position,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
            backtrace: std::backtrace::Backtrace::disabled(),
        }
    }

    fn check_header(&self, header: &DataElementHeader) -> Result<()> {
        let Some(len) = header.length().get() else {
            return Ok(()); // undefined: a sequence or pixel fragments, read item by item
        };
        let (group, element) = (header.tag().group(), header.tag().element());
        let remaining = self.remaining();
        if len as u64 > remaining {
            return Err(self.refuse(format!(
                "element ({group:04X},{element:04X}) claims {len} bytes but only {remaining} remain"
            )));
        }
        // PS3.5 6.2: dicom-parser reads len / size values of a binary VR but advances by len, so
        // a partial value shifts its reading into the middle of the next element.
        let size = match header.vr() {
            VR::US | VR::SS | VR::OW => 2,
            VR::AT | VR::UL | VR::SL | VR::FL | VR::OL | VR::OF => 4,
            VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
            _ => 1,
        };
        if !len.is_multiple_of(size) {
            return Err(self.refuse(format!(
                "element ({group:04X},{element:04X}) of VR {} holds {len} bytes, not whole {size}-byte values",
                header.vr().to_string()
            )));
        }
        Ok(())
    }
}

impl<D: StatefulDecode> StatefulDecode for BoundedDecoder<'_, D> {
    type Reader = D::Reader;

    fn decode_header(&mut self) -> Result<DataElementHeader> {
        let header = self.inner.decode_header()?;
        self.check_header(&header)?;
        self.offset_table_next = header.is_encapsulated_pixeldata();
        Ok(header)
    }

    fn decode_item_header(&mut self) -> Result<SequenceItemHeader> {
        let item = self.inner.decode_item_header()?;
        let offset_table = std::mem::take(&mut self.offset_table_next);
        if let SequenceItemHeader::Item { len } = item {
            if let Some(len) = len.get() {
                let remaining = self.remaining();
                if len as u64 > remaining {
                    return Err(self.refuse(format!(
                        "item (FFFE,E000) claims {len} bytes but only {remaining} remain"
                    )));
                }
                if offset_table && len > MAX_OFFSET_TABLE_BYTES {
                    return Err(self.refuse(format!(
                        "the Basic Offset Table holds {len} bytes, more than one offset for each of {} frames",
                        super::MAX_FRAMES
                    )));
                }
            }
        }
        Ok(item)
    }

    fn read_value(&mut self, header: &DataElementHeader) -> Result<PrimitiveValue> {
        self.inner.read_value(header)
    }

    fn read_value_preserved(&mut self, header: &DataElementHeader) -> Result<PrimitiveValue> {
        self.inner.read_value_preserved(header)
    }

    fn read_value_bytes(&mut self, header: &DataElementHeader) -> Result<PrimitiveValue> {
        self.inner.read_value_bytes(header)
    }

    fn read_to_vec(&mut self, length: u32, vec: &mut Vec<u8>) -> Result<()> {
        self.inner.read_to_vec(length, vec)
    }

    fn read_u32_to_vec(&mut self, length: u32, vec: &mut Vec<u32>) -> Result<()> {
        self.inner.read_u32_to_vec(length, vec)
    }

    fn read_to<W>(&mut self, length: u32, out: W) -> Result<()>
    where
        Self: Sized,
        W: std::io::Write,
    {
        self.inner.read_to(length, out)
    }

    fn skip_bytes(&mut self, length: u32) -> Result<()> {
        self.inner.skip_bytes(length)
    }

    fn seek(&mut self, position: u64) -> Result<()>
    where
        Self::Reader: Seek,
    {
        self.inner.seek(position)
    }

    fn position(&self) -> u64 {
        self.inner.position()
    }
}
