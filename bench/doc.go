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
package bench
