//go:build !amd64 || !gc || purego

package chunkstore

const haveGFNI = false

func gfniScan(win *byte, blocks int, mats *[128]uint64, masks uint64) (int, uint64) {
	panic("chunkstore: gfniScan without GFNI")
}
