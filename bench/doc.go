// Package bench is the throughput-tuning harness behind `vmvault bench`.
//
// Run (stages.go) builds or reuses a synthetic fleet (fleet.go: dynamic
// VHDX disks with GPT, NTFS and ext4 made by qemu-img, sgdisk, mkntfs with
// an ntfs-3g mount, mkfs.ext4 and debugfs; OS files from /usr shared by
// every VM, per-VM text, random data, zero areas, a pagefile.sys, and churn
// generations), then measures each stage with the vmvault binary as a child
// process: full backup, one incremental per generation, express full,
// restore as VHDX and raw, mount with sequential and random 4 KiB reads
// (reads.go), an item-level folder copy from the mount, and check
// --read-data. Every restore and copy is checked afterwards against an
// independent oracle (verify.go: qemu-img conversions, the staged source
// tree). restic and borg run the same stages on the same files in the same
// run (peers.go). Knob sweeps (sweep.go) rerun the backup stages in a fresh
// repository per value. The report (report.go) is a table, a JSON document
// and an SVG chart (chart.go).
//
// `vmvault bench --scale` (RunScale, scale.go) builds a fraction of the
// chunk index of a full server (800 VMs x 100 GiB, 30 recovery points by
// default) with the chunkstore's index technology (Badger, same options and
// key layout) but without the data, measures insert and lookup rates, size
// on disk, peak RSS and reopen time, and extrapolates the index and the
// catalog (pointer files, manifests) to the full server.
//
// bench/peers.sh is the older script that runs vmvault and restic side by
// side on the reference image of ../shared/tools/make-reference-image.sh.
package bench
