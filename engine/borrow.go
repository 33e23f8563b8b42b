package engine

// Borrow returns a second handle on the same open repository for code that
// must not end it: the handle's Close does nothing, so the store stays
// open for r's owner. vmvault mount lends one to each command it runs on
// behalf of another vmvault process (which cannot open the repository
// itself: the chunkstore lock makes it single-process). r must outlive
// every borrowed handle; the concurrency rules of r apply to the handles
// together (one Backup/Restore/Check at a time is the intended use).
func (r *Repo) Borrow() *Repo {
	b := &Repo{Catalog: r.Catalog, dir: r.dir, store: r.store, logf: r.logf}
	b.closeOnce.Do(func() {}) // Close: nothing left to do
	return b
}
