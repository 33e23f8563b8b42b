package vhdx

import (
	"bytes"
	"encoding/binary"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// HeaderInfo is one of the two 4 KiB headers (MS-VHDX 2.2.2). Valid is false
// when the signature, checksum or version is wrong; Problem then says which.
type HeaderInfo struct {
	Valid          bool
	Problem        string `json:",omitempty"`
	SequenceNumber uint64
	FileWriteGUID  vdisk.GUID
	DataWriteGUID  vdisk.GUID
	LogGUID        vdisk.GUID
	LogVersion     uint16
	Version        uint16
	LogLength      uint32
	LogOffset      uint64
}

// parseHeader decodes a 4 KiB header slot. It never fails: an unusable
// header is reported through Valid/Problem so that the caller can fall back
// to the other copy and still describe both in Info.
func parseHeader(buf []byte) HeaderInfo {
	var h HeaderInfo
	if len(buf) < HeaderSize {
		h.Problem = "short read"
		return h
	}
	le := binary.LittleEndian
	h.SequenceNumber = le.Uint64(buf[8:])
	h.FileWriteGUID = vdisk.GUIDFromMixed(buf[16:32])
	h.DataWriteGUID = vdisk.GUIDFromMixed(buf[32:48])
	h.LogGUID = vdisk.GUIDFromMixed(buf[48:64])
	h.LogVersion = le.Uint16(buf[64:])
	h.Version = le.Uint16(buf[66:])
	h.LogLength = le.Uint32(buf[68:])
	h.LogOffset = le.Uint64(buf[72:])
	switch {
	case string(buf[:4]) != SigHeader:
		h.Problem = "bad signature"
	case le.Uint32(buf[4:]) != Checksum(buf[:HeaderSize], 4):
		h.Problem = "checksum mismatch"
	case h.Version != 1:
		// qemu also insists on version 1; a future version may change the layout.
		h.Problem = "unsupported version"
	default:
		h.Valid = true
	}
	return h
}

// selectHeader picks the current header (MS-VHDX 2.2.2.1): the only valid
// one, or the valid one with the greater sequence number. Equal numbers are
// accepted only when both headers are byte-identical (Disk2VHD writes such
// files; qemu does the same). It returns the index 0 or 1.
func selectHeader(h [2]HeaderInfo, raw [2][]byte) (int, error) {
	switch {
	case h[0].Valid && h[1].Valid:
		switch {
		case h[0].SequenceNumber > h[1].SequenceNumber:
			return 0, nil
		case h[1].SequenceNumber > h[0].SequenceNumber:
			return 1, nil
		case bytes.Equal(raw[0][:HeaderSize], raw[1][:HeaderSize]):
			return 0, nil
		}
		return 0, rdCorrupt("header: both headers have sequence number %d but differ", h[0].SequenceNumber)
	case h[0].Valid:
		return 0, nil
	case h[1].Valid:
		return 1, nil
	}
	return 0, rdCorrupt("header: no valid header (header 1: %s; header 2: %s)", h[0].Problem, h[1].Problem)
}

// checkLogPlacement validates the log fields of the current header. qemu
// checks them even when LogGuid is zero, and the region overlap checks rely
// on them, so a misplaced log is always an error.
func checkLogPlacement(h HeaderInfo, fileSize int64) error {
	if h.LogLength == 0 {
		return nil
	}
	if h.LogLength%MiB != 0 || h.LogOffset%MiB != 0 || h.LogOffset < HeaderSectionSize {
		return rdCorrupt("header: log at %#x length %#x is not 1 MiB aligned", h.LogOffset, h.LogLength)
	}
	if h.LogOffset > uint64(fileSize) || uint64(h.LogLength) > uint64(fileSize)-h.LogOffset {
		return rdCorrupt("header: log at %#x length %#x lies past end of file (%d bytes)", h.LogOffset, h.LogLength, fileSize)
	}
	return nil
}
