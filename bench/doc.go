// Package bench will hold the throughput-tuning harness behind `vmvault
// bench`: a synthetic VM fleet built with real tools, stage timings (full,
// incremental, express full, restore, mount reads, item-level copy, check),
// knob sweeps and side-by-side runs of restic and borg on the same images.
//
// Until it exists, performance is measured with the `go test -bench`
// benchmarks of each package (make bench), and bench/peers.sh runs vmvault
// and restic side by side on the reference image (full, incremental,
// restore; medians, CPU seconds, peak RSS, repository sizes and vmvault's
// stage timings from `backup --json`).
//
// What exists is `vmvault bench --scale` (RunScale, scale.go): it builds a
// fraction of the chunk index of a full server (800 VMs x 100 GiB, 30
// recovery points by default) with the chunkstore's index technology
// (Badger, same options and key layout) but without the data, measures
// insert and lookup rates, size on disk, peak RSS and reopen time, and
// extrapolates the index and the catalog (pointer files, manifests) to the
// full server.
package bench
