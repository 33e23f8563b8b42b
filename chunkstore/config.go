package chunkstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"strconv"

	"github.com/restic/chunker"
	"golang.org/x/crypto/argon2"
)

// FormatVersion is the repository format this build reads and writes.
const FormatVersion = 1

// configName is the repository configuration file in the repository root.
const configName = "config"

// Default parameters. Why these values: see DefaultChunkMin and friends and
// the "Defaults" section of README.md in this directory.
const (
	// Chunk sizes, chosen by BenchmarkChunkParams on 256 MB of /usr data
	// with ~3% of 4 KiB blocks overwritten in 32 KiB runs (a VM disk's
	// churn between backups): the second backup stored 172 MiB of raw data
	// anew with restic's 512K/1M/8M, 86 MiB with 64K/256K/2M and 39 MiB
	// with 32K/64K/256K, at about the same CPU cost per byte (99-105
	// MB/cpu-s). Disk churn is scattered in-place writes, so smaller chunks
	// pay; 256 KiB average keeps the index at ~5k entries per GB (~50 MB of
	// Badger per 100 GB of unique data) and per-chunk costs (Has round
	// trips, trailer entries) low. The 64 KiB frames (below) keep random
	// reads cheap whatever the chunk size.
	DefaultChunkMin = 64 << 10
	DefaultChunkAvg = 256 << 10
	DefaultChunkMax = 2 << 20
	// DefaultFrameSize is the unit of independent compression/encryption
	// inside a chunk: a 4 KiB FUSE read decodes at most one or two of them.
	DefaultFrameSize = 64 << 10
	// DefaultPackSize is the target size of a sealed pack: large enough that
	// per-pack costs (K+M fsyncs, one index batch) are amortised, small
	// enough that a repack or a repair moves little and ingest memory stays
	// bounded (an open pack plus MaxPacksInFlight sealed ones).
	DefaultPackSize = 32 << 20
	// DefaultCompression is MinLZ: measured here (compress.go) it encodes
	// ~2x and decodes 1.5x faster than C zstd level 1 for ~20 % more
	// stored bytes (ratio 0.56 vs 0.47 on OS files), which is what lets a
	// full backup, a restore and a mounted read keep up with two cores;
	// still far below restic's repository size for the same image. Choose
	// zstd at init when storage matters more than time (Veeam's default,
	// "optimal", is the same trade: LZ4). It replaced s2 (2026-11-27):
	// 5-20 % faster encoding, 2 % smaller, decoding as fast or faster; the
	// reference image's full backup took 4.16-4.62 s against s2's
	// 4.43-5.27 s, interleaved, and its repository 2 % less space.
	DefaultCompression = CompressionMinLZ
	// DefaultZstdLevel is the level of "zstd" without one: 1, the fastest
	// positive level (negative ones are zstd's fast modes).
	DefaultZstdLevel = 1
	DefaultK         = 8
	DefaultM         = 2
	// Argon2id parameters for the password KEK: 64 MiB, 3 passes.
	DefaultKDFTime      = 3
	DefaultKDFMemoryKiB = 64 << 10
	DefaultKDFThreads   = 2
)

// Config is the JSON document stored in <repo>/config. It is fixed at Init;
// only the encryption block changes (ChangePassword).
type Config struct {
	Version int    `json:"version"`
	ID      string `json:"id"` // random repository ID (hex)

	DataShards   int      `json:"data_shards"`
	ParityShards int      `json:"parity_shards"`
	ShardBlock   int      `json:"shard_block_size"`
	Pools        []string `json:"pools"` // relative to the repository dir unless absolute

	Chunker ChunkerParams `json:"chunker"`

	FrameSize   int    `json:"frame_size"`
	Compression string `json:"compression"` // "minlz", "s2", "zstd" or "none"
	ZstdLevel   int    `json:"zstd_level"`
	PackSize    int    `json:"pack_size"`

	// IDKey is the BLAKE3 key for chunk IDs of an unencrypted repository
	// (hex). Encrypted repositories keep it inside the wrapped master key,
	// so chunk IDs reveal nothing about content to someone without the
	// password.
	IDKey      string            `json:"id_key,omitempty"`
	Encryption *EncryptionParams `json:"encryption,omitempty"`
}

// ChunkerParams fix content-defined chunking for the repository's lifetime:
// dedup across backups needs the same polynomial and sizes.
type ChunkerParams struct {
	Polynomial string `json:"polynomial"` // hex, restic/chunker.Pol
	Min        int    `json:"min"`
	Avg        int    `json:"avg"` // a power of two (restic/chunker average bits)
	Max        int    `json:"max"`
}

// EncryptionParams hold the password KDF and the wrapped master key.
type EncryptionParams struct {
	KDF        string `json:"kdf"` // "argon2id"
	Salt       []byte `json:"salt"`
	Time       uint32 `json:"time"`
	MemoryKiB  uint32 `json:"memory_kib"`
	Threads    uint8  `json:"threads"`
	WrappedKey []byte `json:"wrapped_key"` // nonce(12) || AES-256-GCM(master key material)
}

// InitOptions choose the fixed parameters of a new repository. Zero values
// take the defaults above.
type InitOptions struct {
	Pools        []string // pool directories; default one pool "<dir>/data"
	DataShards   int      // K, default 8
	ParityShards int      // M, default 2; set NoParity for M=0
	NoParity     bool
	ChunkMin     int
	ChunkAvg     int // rounded to a power of two
	ChunkMax     int
	FrameSize    int // power of two in [4 KiB, 1 MiB]
	PackSize     int
	// Compression is "minlz" (default), "s2", "zstd" or "none"; ZstdLevel the zstd
	// level, -7..-1 (fast levels) or 1..22, 0 = DefaultZstdLevel (a level
	// without Compression means zstd).
	Compression string
	ZstdLevel   int
	NoCompress  bool // store every frame raw (same as Compression "none")
	Password    []byte
	// KDFTime/KDFMemoryKiB lower the Argon2id cost (tests); zero = defaults.
	KDFTime      uint32
	KDFMemoryKiB uint32
}

// keys are the secrets derived from the config (and password).
type keys struct {
	idKey [32]byte
	aead  cipher.AEAD // nil for an unencrypted repository
}

// master key material: 32 bytes AES-256 key || 32 bytes BLAKE3 ID key.
const masterLen = 64

// wrapAAD binds a wrapped key to its repository so that a config's key
// block cannot be transplanted into another repository's config.
func wrapAAD(repoID string) []byte { return []byte("vmvault master key v1 " + repoID) }

// Init creates a repository in dir (which must not hold a config yet).
func Init(dir string, opts InitOptions) error {
	if _, err := os.Stat(filepath.Join(dir, configName)); err == nil {
		return fmt.Errorf("chunkstore: init %s: repository already exists", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("chunkstore: init: %w", err)
	}
	cfg, err := newConfig(dir, opts)
	if err != nil {
		return err
	}
	for _, p := range cfg.Pools {
		if err := os.MkdirAll(poolPath(dir, p), 0o700); err != nil {
			return fmt.Errorf("chunkstore: init: pool: %w", err)
		}
	}
	return writeConfig(dir, cfg)
}

func newConfig(dir string, o InitOptions) (*Config, error) {
	c := &Config{Version: FormatVersion}
	var rid [16]byte
	mustRand(rid[:])
	c.ID = hex.EncodeToString(rid[:])

	c.DataShards, c.ParityShards = DefaultK, DefaultM
	if o.DataShards > 0 {
		c.DataShards = o.DataShards
	}
	if o.ParityShards > 0 {
		c.ParityShards = o.ParityShards
	}
	if o.NoParity {
		c.ParityShards = 0
	}
	if c.DataShards+c.ParityShards > 256 {
		return nil, fmt.Errorf("chunkstore: init: K+M = %d exceeds 256", c.DataShards+c.ParityShards)
	}
	c.ShardBlock = 64 << 10
	pools := o.Pools
	if len(pools) == 0 {
		pools = []string{"data"}
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: init: %w", err)
	}
	for _, p := range pools {
		// Store pools inside the repository relative to it so the
		// repository can be moved; others absolute.
		if filepath.IsAbs(p) {
			if rel, err := filepath.Rel(absDir, p); err == nil && filepath.IsLocal(rel) {
				p = rel
			}
		} else if abs, err := filepath.Abs(p); err == nil && !filepath.IsLocal(p) {
			p = abs
		}
		c.Pools = append(c.Pools, p)
	}

	pol, err := chunker.RandomPolynomial()
	if err != nil {
		return nil, fmt.Errorf("chunkstore: init: polynomial: %w", err)
	}
	c.Chunker = ChunkerParams{Polynomial: strconv.FormatUint(uint64(pol), 16),
		Min: DefaultChunkMin, Avg: DefaultChunkAvg, Max: DefaultChunkMax}
	if o.ChunkMin > 0 {
		c.Chunker.Min = o.ChunkMin
	}
	if o.ChunkAvg > 0 {
		c.Chunker.Avg = 1 << (bits.Len(uint(o.ChunkAvg)) - 1)
	}
	if o.ChunkMax > 0 {
		c.Chunker.Max = o.ChunkMax
	}
	c.FrameSize = DefaultFrameSize
	if o.FrameSize > 0 {
		c.FrameSize = o.FrameSize
	}
	c.PackSize = DefaultPackSize
	if o.PackSize > 0 {
		c.PackSize = o.PackSize
	}
	c.Compression, c.ZstdLevel = DefaultCompression, 0
	switch {
	case o.NoCompress:
		c.Compression = CompressionNone
	case o.Compression != "":
		c.Compression = o.Compression
	case o.ZstdLevel != 0:
		c.Compression = CompressionZstd
	}
	if c.Compression == CompressionZstd {
		c.ZstdLevel = DefaultZstdLevel
		if o.ZstdLevel != 0 {
			c.ZstdLevel = o.ZstdLevel
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}

	var master [masterLen]byte
	mustRand(master[:])
	if len(o.Password) == 0 {
		c.IDKey = hex.EncodeToString(master[32:])
		return c, nil
	}
	e := &EncryptionParams{KDF: "argon2id", Time: DefaultKDFTime, MemoryKiB: DefaultKDFMemoryKiB, Threads: DefaultKDFThreads}
	if o.KDFTime > 0 {
		e.Time = o.KDFTime
	}
	if o.KDFMemoryKiB > 0 {
		e.MemoryKiB = o.KDFMemoryKiB
	}
	if err := e.wrap(c.ID, o.Password, master[:]); err != nil {
		return nil, err
	}
	c.Encryption = e
	return c, nil
}

// wrap seals master under a fresh salt and the password's KEK.
func (e *EncryptionParams) wrap(repoID string, password, master []byte) error {
	e.Salt = make([]byte, 16)
	mustRand(e.Salt)
	aead, err := newGCM(e.kek(password))
	if err != nil {
		return err
	}
	nonce := make([]byte, aead.NonceSize())
	mustRand(nonce)
	e.WrappedKey = aead.Seal(nonce, nonce, master, wrapAAD(repoID))
	return nil
}

func (e *EncryptionParams) kek(password []byte) []byte {
	return argon2.IDKey(password, e.Salt, e.Time, e.MemoryKiB, e.Threads, 32)
}

// unwrap returns the master key material or ErrWrongPassword.
func (e *EncryptionParams) unwrap(repoID string, password []byte) ([]byte, error) {
	if e.KDF != "argon2id" {
		return nil, fmt.Errorf("chunkstore: config: unknown kdf %q", e.KDF)
	}
	// Bound the KDF cost a (hostile) config can ask for: 4 GiB, 100 passes.
	if e.MemoryKiB == 0 || e.MemoryKiB > 4<<20 || e.Time == 0 || e.Time > 100 || e.Threads == 0 || len(e.Salt) < 8 {
		return nil, fmt.Errorf("chunkstore: config: bad kdf parameters")
	}
	aead, err := newGCM(e.kek(password))
	if err != nil {
		return nil, err
	}
	if len(e.WrappedKey) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("chunkstore: config: %w: wrapped key too short", ErrCorrupt)
	}
	ns := aead.NonceSize()
	master, err := aead.Open(nil, e.WrappedKey[:ns], e.WrappedKey[ns:], wrapAAD(repoID))
	if err != nil || len(master) != masterLen {
		return nil, ErrWrongPassword
	}
	return master, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: cipher: %w", err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: cipher: %w", err)
	}
	return g, nil
}

func mustRand(b []byte) {
	if _, err := rand.Read(b); err != nil {
		panic("chunkstore: crypto/rand: " + err.Error()) // never fails on supported platforms
	}
}

func (c *Config) validate() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("chunkstore: config: "+f, a...)
	}
	if c.DataShards < 1 || c.ParityShards < 0 || c.DataShards+c.ParityShards > 256 {
		return bad("bad shard counts K=%d M=%d", c.DataShards, c.ParityShards)
	}
	if len(c.Pools) == 0 {
		return bad("no pools")
	}
	ch := c.Chunker
	if _, err := strconv.ParseUint(ch.Polynomial, 16, 64); err != nil {
		return bad("bad chunker polynomial %q", ch.Polynomial)
	}
	if ch.Min < 4<<10 || ch.Avg <= ch.Min/2 || ch.Max < ch.Min || ch.Max > 64<<20 || ch.Avg&(ch.Avg-1) != 0 {
		return bad("bad chunk sizes min=%d avg=%d max=%d (need 4 KiB <= min, avg a power of two, min <= max <= 64 MiB)", ch.Min, ch.Avg, ch.Max)
	}
	if c.FrameSize < minFrameSize || c.FrameSize > maxFrameSize || c.FrameSize&(c.FrameSize-1) != 0 {
		return bad("bad frame size %d", c.FrameSize)
	}
	if c.PackSize < 64<<10 || c.PackSize > 1<<30 {
		return bad("bad pack size %d", c.PackSize)
	}
	switch c.Compression {
	case CompressionNone, CompressionS2, CompressionMinLZ:
	case CompressionZstd:
		if c.ZstdLevel == 0 || c.ZstdLevel < MinZstdLevel || c.ZstdLevel > MaxZstdLevel {
			return bad("bad zstd level %d", c.ZstdLevel)
		}
	default:
		return bad("unknown compression %q", c.Compression)
	}
	return nil
}

func (c *Config) polynomial() chunker.Pol {
	v, _ := strconv.ParseUint(c.Chunker.Polynomial, 16, 64) // validated
	return chunker.Pol(v)
}

// readConfig loads and validates dir/config. The version is checked before
// anything else so an unknown format gives one clear line.
func readConfig(dir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, configName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("chunkstore: %s is not a repository (no config): %w", dir, ErrNotFound)
		}
		return nil, fmt.Errorf("chunkstore: read config: %w", err)
	}
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("chunkstore: config: %w: %v", ErrCorrupt, err)
	}
	if v.Version != FormatVersion {
		return nil, fmt.Errorf("chunkstore: repository format version %d not supported (this build reads %d)", v.Version, FormatVersion)
	}
	c := new(Config)
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("chunkstore: config: %w: %v", ErrCorrupt, err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// writeConfig replaces dir/config atomically and durably: temp file, fsync,
// rename, fsync of the directory.
func writeConfig(dir string, c *Config) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("chunkstore: config: %w", err)
	}
	b = append(b, '\n')
	f, err := os.CreateTemp(dir, ".config-*")
	if err != nil {
		return fmt.Errorf("chunkstore: write config: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("chunkstore: write config: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("chunkstore: write config: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("chunkstore: write config: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("chunkstore: write config: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, configName)); err != nil {
		return fmt.Errorf("chunkstore: write config: %w", err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("chunkstore: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("chunkstore: sync dir: %w", err)
	}
	return nil
}

func poolPath(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// deriveKeys unwraps the master key (encrypted repositories) or reads the ID
// key (plain ones).
func (c *Config) deriveKeys(password []byte) (*keys, error) {
	k := new(keys)
	if c.Encryption == nil {
		b, err := hex.DecodeString(c.IDKey)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("chunkstore: config: %w: bad id_key", ErrCorrupt)
		}
		copy(k.idKey[:], b)
		return k, nil
	}
	if len(password) == 0 {
		return nil, ErrPasswordRequired
	}
	master, err := c.Encryption.unwrap(c.ID, password)
	if err != nil {
		return nil, err
	}
	aead, err := newGCM(master[:32])
	if err != nil {
		return nil, err
	}
	k.aead = aead
	copy(k.idKey[:], master[32:])
	return k, nil
}

// ChangePassword re-wraps the master key of the encrypted repository in dir
// under newPassword. Data is untouched: chunks are sealed with the master
// key, which does not change. The Store must not be open elsewhere
// (the config rename is atomic, so a concurrent reader sees old or new).
func ChangePassword(dir string, oldPassword, newPassword []byte) error {
	c, err := readConfig(dir)
	if err != nil {
		return err
	}
	if c.Encryption == nil {
		return fmt.Errorf("chunkstore: repository is not encrypted")
	}
	if len(newPassword) == 0 {
		return fmt.Errorf("chunkstore: empty new password")
	}
	master, err := c.Encryption.unwrap(c.ID, oldPassword)
	if err != nil {
		return err
	}
	if err := c.Encryption.wrap(c.ID, newPassword, master); err != nil {
		return err
	}
	return writeConfig(dir, c)
}

// ChangePassword re-wraps the master key of the open (encrypted) store's
// repository; see the package-level ChangePassword.
func (s *Store) ChangePassword(oldPassword, newPassword []byte) error {
	if err := ChangePassword(s.dir, oldPassword, newPassword); err != nil {
		return err
	}
	c, err := readConfig(s.dir)
	if err != nil {
		return err
	}
	s.cfg.Encryption = c.Encryption
	return nil
}
