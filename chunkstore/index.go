package chunkstore

import (
	"encoding/binary"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// The index is a Badger database in <repo>/index. It is a cache of what the
// packs' trailers say (Rebuild recreates it) plus the pack write-ahead marks.
// Keys:
//
//	'c' || chunk ID  -> location: pack ID [32], u64 offset, u32 stored, u32 raw
//	'p' || pack ID   -> committed pack: u32 chunk count
//	'q' || pack ID   -> pending pack: written (synced) before shard.Write;
//	                    Open finishes or discards it (see recoverPending)
//	'd' || pack ID   -> doomed pack: GC dropped its chunks from the index in
//	                    the same transaction and is deleting its shards;
//	                    Open finishes the deletion after a crash
//	'v'              -> index format version and repository ID; written
//	                    last by Rebuild, so an index without it (new, deleted
//	                    or interrupted rebuild) is rebuilt at Open.
//
// Chunk IDs and pack IDs are keyed hashes / random, so the index reveals no
// content of an encrypted repository; it is not encrypted.

const (
	idxChunk   = 'c'
	idxPack    = 'p'
	idxPending = 'q'
	idxVersion = 'v'
	idxDoomed  = 'd'
	locLen     = 48
	indexFmt   = 1
)

type location struct {
	Pack   PackID
	Offset uint64
	Stored uint32
	Raw    uint32
}

func (l location) marshal() []byte {
	b := make([]byte, locLen)
	copy(b, l.Pack[:])
	binary.LittleEndian.PutUint64(b[32:], l.Offset)
	binary.LittleEndian.PutUint32(b[40:], l.Stored)
	binary.LittleEndian.PutUint32(b[44:], l.Raw)
	return b
}

func parseLocation(b []byte) (location, error) {
	var l location
	if len(b) != locLen {
		return l, fmt.Errorf("chunkstore: index: %w: bad location of %d bytes", ErrCorrupt, len(b))
	}
	copy(l.Pack[:], b)
	l.Offset = binary.LittleEndian.Uint64(b[32:])
	l.Stored = binary.LittleEndian.Uint32(b[40:])
	l.Raw = binary.LittleEndian.Uint32(b[44:])
	return l, nil
}

func key(prefix byte, id [32]byte) []byte {
	k := make([]byte, 33)
	k[0] = prefix
	copy(k[1:], id[:])
	return k
}

type index struct {
	db *badger.DB
}

// IndexOptions are the Badger options of the chunk index in dir. They are
// exported so that `vmvault bench --scale` measures exactly this index.
func IndexOptions(dir string) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(nil).
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(4 << 20).
		WithBlockCacheSize(16 << 20).
		WithIndexCacheSize(16 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithCompression(options.None).
		WithDetectConflicts(false).
		WithNumVersionsToKeep(1).
		WithMetricsEnabled(false)
}

// openIndex opens (creating) the Badger index tuned for small memory: the
// values are 48 bytes and the keys random, so no compression, small
// memtables and caches (Has/Get lookups are served by Badger's per-table
// bloom filters and the OS page cache).
func openIndex(dir string) (*index, error) {
	db, err := badger.Open(IndexOptions(dir))
	if err != nil {
		return nil, fmt.Errorf("chunkstore: open index: %w", err)
	}
	return &index{db: db}, nil
}

func (x *index) close() error {
	if err := x.db.Close(); err != nil {
		return fmt.Errorf("chunkstore: close index: %w", err)
	}
	return nil
}

func (x *index) get(k []byte) ([]byte, error) {
	var v []byte
	err := x.db.View(func(txn *badger.Txn) error {
		it, err := txn.Get(k)
		if err != nil {
			return err
		}
		v, err = it.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("chunkstore: index: %w", err)
	}
	return v, nil
}

// lookup returns a chunk's location or ErrNotFound.
func (x *index) lookup(id ID) (location, error) {
	v, err := x.get(key(idxChunk, id))
	if err != nil {
		return location{}, err
	}
	return parseLocation(v)
}

// has reports whether a chunk is indexed, without copying its value.
func (x *index) has(id ID) (bool, error) {
	found := false
	err := x.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key(idxChunk, id))
		if err == nil {
			found = true
			return nil
		}
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("chunkstore: index: %w", err)
	}
	return found, nil
}

// hasMany sets out[i] for every ids[i] that is indexed (and out[i] not
// already set), in one read transaction.
func (x *index) hasMany(ids []ID, out []bool) error {
	err := x.db.View(func(txn *badger.Txn) error {
		k := make([]byte, 33)
		k[0] = idxChunk
		for i, id := range ids {
			if out[i] {
				continue
			}
			copy(k[1:], id[:])
			_, err := txn.Get(k)
			if err == nil {
				out[i] = true
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("chunkstore: index: %w", err)
	}
	return nil
}

// markPending records (durably) that pack id is about to be written.
func (x *index) markPending(id PackID) error {
	if err := x.db.Update(func(txn *badger.Txn) error { return txn.Set(key(idxPending, id), nil) }); err != nil {
		return fmt.Errorf("chunkstore: index: %w", err)
	}
	if err := x.db.Sync(); err != nil {
		return fmt.Errorf("chunkstore: index sync: %w", err)
	}
	return nil
}

// commitPack makes a written pack's chunks visible and clears its pending
// mark, in one batch. It is not synced: if it is lost in an OS crash the
// pending mark survives and Open re-commits the pack from its trailer.
func (x *index) commitPack(id PackID, es []packEntry) error {
	wb := x.db.NewWriteBatch()
	defer wb.Cancel()
	for _, e := range es {
		l := location{Pack: id, Offset: e.Offset, Stored: e.Stored, Raw: e.Raw}
		if err := wb.Set(key(idxChunk, e.ID), l.marshal()); err != nil {
			return fmt.Errorf("chunkstore: index: %w", err)
		}
	}
	var cnt [4]byte
	binary.LittleEndian.PutUint32(cnt[:], uint32(len(es)))
	if err := wb.Set(key(idxPack, id), cnt[:]); err != nil {
		return fmt.Errorf("chunkstore: index: %w", err)
	}
	if err := wb.Delete(key(idxPending, id)); err != nil {
		return fmt.Errorf("chunkstore: index: %w", err)
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("chunkstore: index: %w", err)
	}
	return nil
}

// dropPack removes a pack and those of its chunks whose entry still points
// to it (a repacked chunk already points elsewhere).
func (x *index) dropPack(id PackID, ids []ID) error {
	return x.db.Update(func(txn *badger.Txn) error {
		for _, c := range ids {
			it, err := txn.Get(key(idxChunk, c))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			v, err := it.ValueCopy(nil)
			if err != nil {
				return err
			}
			if l, err := parseLocation(v); err == nil && l.Pack != id {
				continue
			}
			if err := txn.Delete(key(idxChunk, c)); err != nil {
				return err
			}
		}
		if err := txn.Delete(key(idxPending, id)); err != nil {
			return err
		}
		if err := txn.Set(key(idxDoomed, id), nil); err != nil {
			return err
		}
		return txn.Delete(key(idxPack, id))
	})
}

func (x *index) clearDoomed(id PackID) error {
	return x.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(idxDoomed, id)) })
}

func (x *index) clearPending(id PackID) error {
	return x.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(idxPending, id)) })
}

// scan calls fn for each key with the given prefix (key without prefix).
func (x *index) scan(prefix byte, fn func(k [32]byte, v []byte) error) error {
	err := x.db.View(func(txn *badger.Txn) error {
		o := badger.DefaultIteratorOptions
		o.Prefix = []byte{prefix}
		o.PrefetchValues = prefix == idxChunk
		it := txn.NewIterator(o)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) != 33 {
				continue
			}
			var id [32]byte
			copy(id[:], k[1:])
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := fn(id, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("chunkstore: index scan: %w", err)
	}
	return nil
}

func versionValue(repoID string) []byte {
	return append([]byte{indexFmt}, repoID...)
}

// valid reports whether the index was completely built for this repository.
func (x *index) valid(repoID string) bool {
	v, err := x.get([]byte{idxVersion})
	return err == nil && string(v) == string(versionValue(repoID))
}

func (x *index) setValid(repoID string, ok bool) error {
	err := x.db.Update(func(txn *badger.Txn) error {
		if ok {
			return txn.Set([]byte{idxVersion}, versionValue(repoID))
		}
		return txn.Delete([]byte{idxVersion})
	})
	if err != nil {
		return fmt.Errorf("chunkstore: index: %w", err)
	}
	return x.db.Sync()
}

// dropAll empties the index (Rebuild).
func (x *index) dropAll() error {
	if err := x.db.DropAll(); err != nil {
		return fmt.Errorf("chunkstore: index: %w", err)
	}
	return nil
}
