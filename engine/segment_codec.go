package engine

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// A segment's extents are stored packed: one base64 string per segment
// ("x") instead of a JSON object per extent. A full 100 GiB disk has
// ~400,000 extents; as objects they made a 44 MB manifest that took 0.9 s
// to parse here, longer than the mount's 1 s budget for opening a recovery
// point (BenchmarkLoadManifest100G). Packed, each extent is
//
//	uvarint gap (Off minus the previous extent's end, or minus the
//	        segment's Off for the first), uvarint Len, uvarint ChunkOff,
//	        32 bytes chunk ID
//
// Manifests written before 2026-11-26 hold "extents" objects; both read.

// segmentJSON is the stored form of a Segment.
type segmentJSON struct {
	Off     int64    `json:"off"`
	Hash    string   `json:"hash"`
	Packed  string   `json:"x,omitempty"`
	Extents []Extent `json:"extents,omitempty"` // legacy form
}

// MarshalJSON writes the packed form.
func (s Segment) MarshalJSON() ([]byte, error) {
	buf := make([]byte, 0, len(s.Extents)*40)
	prev := s.Off
	for _, e := range s.Extents {
		if e.Off < prev || e.Len <= 0 || e.ChunkOff < 0 {
			return nil, fmt.Errorf("engine: segment %d: unsorted or empty extent %+v", s.Off, e)
		}
		buf = binary.AppendUvarint(buf, uint64(e.Off-prev))
		buf = binary.AppendUvarint(buf, uint64(e.Len))
		buf = binary.AppendUvarint(buf, uint64(e.ChunkOff))
		buf = append(buf, e.ID[:]...)
		prev = e.End()
	}
	return json.Marshal(segmentJSON{Off: s.Off, Hash: s.Hash, Packed: base64.RawStdEncoding.EncodeToString(buf)})
}

// UnmarshalJSON reads the packed or the legacy form. Bounds: each extent
// takes at least 35 packed bytes, so a hostile segment cannot make this
// allocate more than its own length allows; offsets that would overflow
// are refused here, order and ranges are checked by decodeManifest.
func (s *Segment) UnmarshalJSON(b []byte) error {
	var j segmentJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	s.Off, s.Hash, s.Extents = j.Off, j.Hash, j.Extents
	if j.Packed == "" {
		return nil
	}
	if len(j.Extents) > 0 {
		return errors.New("segment has both packed and listed extents")
	}
	buf, err := base64.RawStdEncoding.DecodeString(j.Packed)
	if err != nil {
		return fmt.Errorf("segment %d: %w", j.Off, err)
	}
	const limit = 1 << 62
	s.Extents = make([]Extent, 0, len(buf)/35)
	prev := uint64(j.Off)
	if j.Off < 0 {
		return fmt.Errorf("segment at negative offset %d", j.Off)
	}
	for len(buf) > 0 {
		var v [3]uint64
		for i := range v {
			x, n := binary.Uvarint(buf)
			if n <= 0 || x >= limit {
				return fmt.Errorf("segment %d: bad packed extent", j.Off)
			}
			v[i], buf = x, buf[n:]
		}
		if len(buf) < 32 || prev+v[0] >= limit || prev+v[0]+v[1] >= limit {
			return fmt.Errorf("segment %d: bad packed extent", j.Off)
		}
		e := Extent{Off: int64(prev + v[0]), Len: int64(v[1]), ChunkOff: int64(v[2])}
		copy(e.ID[:], buf[:32])
		buf = buf[32:]
		s.Extents = append(s.Extents, e)
		prev = uint64(e.End())
	}
	return nil
}
