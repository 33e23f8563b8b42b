package bench

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/internal/units"
)

// Knobs are the repository and process settings a run can vary. The zero
// value of each is vmvault's default.
type Knobs struct {
	ChunkMin int64 `json:"chunk_min,omitempty"`
	ChunkAvg int64 `json:"chunk_avg,omitempty"`
	ChunkMax int64 `json:"chunk_max,omitempty"`
	// Compression is what `vmvault init --compression` takes: minlz, s2, zstd,
	// zstd:LEVEL or none ("" = the chunkstore's default).
	Compression  string `json:"compression,omitempty"`
	DataShards   int    `json:"data_shards,omitempty"`
	ParityShards int    `json:"parity_shards,omitempty"` // -1: no parity
	Encrypt      bool   `json:"encrypt,omitempty"`
	Concurrency  int    `json:"concurrency,omitempty"` // backup segment workers (backup --workers)
	PackSize     int64  `json:"pack_size,omitempty"`
	CacheSize    int64  `json:"cache_size,omitempty"` // mount --cache-size
}

// SweepKeys are the knob names --sweep accepts.
var SweepKeys = []string{"chunk-min", "chunk-avg", "chunk-max", "compression", "rs", "encryption", "concurrency", "pack-size", "cache-size"}

// Sweep is one --sweep KEY=V1,V2,...: the backup stages run once per value
// in a fresh repository, the other knobs at their defaults.
type Sweep struct {
	Key    string   `json:"key"`
	Values []string `json:"values"`
}

// ParseSweep reads KEY=V1,V2,... and checks every value.
func ParseSweep(s string) (Sweep, error) {
	k, vs, ok := strings.Cut(s, "=")
	if !ok || vs == "" {
		return Sweep{}, fmt.Errorf("bench: --sweep %q: want KEY=V1,V2 (keys: %s)", s, strings.Join(SweepKeys, ", "))
	}
	sw := Sweep{Key: strings.TrimSpace(k)}
	for _, v := range strings.Split(vs, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if _, err := (Knobs{}).With(sw.Key, v); err != nil {
			return Sweep{}, err
		}
		sw.Values = append(sw.Values, v)
	}
	if len(sw.Values) == 0 {
		return Sweep{}, fmt.Errorf("bench: --sweep %q: no values", s)
	}
	return sw, nil
}

// With returns k with knob key set to val.
func (k Knobs) With(key, val string) (Knobs, error) {
	bad := func(err error) (Knobs, error) {
		return k, fmt.Errorf("bench: knob %s=%s: %w", key, val, err)
	}
	size := func() (int64, error) {
		n, err := ParseSize(val)
		if err != nil {
			return 0, err
		}
		return n, nil
	}
	var err error
	switch key {
	case "chunk-min":
		k.ChunkMin, err = size()
	case "chunk-avg":
		k.ChunkAvg, err = size()
	case "chunk-max":
		k.ChunkMax, err = size()
	case "compression":
		if _, _, err := parseCompression(val); err != nil {
			return bad(err)
		}
		k.Compression = val
	case "rs":
		d, p, ok := strings.Cut(val, "+")
		if !ok {
			return bad(fmt.Errorf("want DATA+PARITY like 8+2"))
		}
		if k.DataShards, err = strconv.Atoi(d); err == nil && k.DataShards < 1 {
			err = fmt.Errorf("data shards must be >= 1")
		}
		if err == nil {
			if k.ParityShards, err = strconv.Atoi(p); err == nil && k.ParityShards < 0 {
				err = fmt.Errorf("parity shards must be >= 0")
			}
		}
		if err == nil && k.ParityShards == 0 {
			k.ParityShards = -1
		}
	case "encryption":
		switch strings.ToLower(val) {
		case "on", "true", "yes", "1":
			k.Encrypt = true
		case "off", "false", "no", "0":
			k.Encrypt = false
		default:
			err = fmt.Errorf("want on or off")
		}
	case "concurrency":
		if k.Concurrency, err = strconv.Atoi(val); err == nil && k.Concurrency < 1 {
			err = fmt.Errorf("want >= 1")
		}
	case "pack-size":
		k.PackSize, err = size()
	case "cache-size":
		if k.CacheSize, err = size(); err == nil && k.CacheSize < 4<<20 {
			err = fmt.Errorf("at least 4M")
		}
	default:
		err = fmt.Errorf("unknown knob (keys: %s)", strings.Join(SweepKeys, ", "))
	}
	if err != nil {
		return bad(err)
	}
	return k, nil
}

// parseCompression reads the `vmvault init --compression` syntax (minlz, zstd,
// zstd:LEVEL, s2, none) with the chunkstore's own parser, so the knob
// accepts exactly what init does.
func parseCompression(v string) (method string, level int, err error) {
	return chunkstore.ParseCompression(v)
}

// initOptions are the chunkstore parameters of a repository for k. A chunk
// average set alone brings min and max along (avg/4, avg*8: vmvault's own
// default ratio) so that every value of a chunk-avg sweep is a valid and
// comparable chunker.
func (k Knobs) initOptions(password []byte) chunkstore.InitOptions {
	o := chunkstore.InitOptions{
		ChunkMin: int(k.ChunkMin), ChunkAvg: int(k.ChunkAvg), ChunkMax: int(k.ChunkMax),
		DataShards: k.DataShards, PackSize: int(k.PackSize), Password: password,
	}
	if k.ChunkAvg > 0 {
		if k.ChunkMin == 0 {
			o.ChunkMin = int(k.ChunkAvg / 4)
		}
		if k.ChunkMax == 0 {
			o.ChunkMax = int(k.ChunkAvg * 8)
		}
	}
	switch {
	case k.ParityShards < 0:
		o.NoParity = true
	case k.ParityShards > 0:
		o.ParityShards = k.ParityShards
	}
	if k.Compression != "" {
		o.Compression, o.ZstdLevel, _ = parseCompression(k.Compression)
	}
	return o
}

// ParseSize reads 1048576, 512K, 256M, 2G, 1T (units.ParseSize).
func ParseSize(s string) (int64, error) { return units.ParseSize(s) }
