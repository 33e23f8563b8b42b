//go:build amd64 && gc && !purego

package chunkstore

import "golang.org/x/sys/cpu"

//go:generate go run gen_cdc_gfni.go

// haveGFNI: the vector boundary filter needs AVX-512 (F, BW for the byte
// test) with GFNI; x/sys/cpu also checks that the OS saves the ZMM state.
var haveGFNI = cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512GFNI

// gfniScan tests blocks of 64 consecutive window positions. win points at
// the oldest byte of the first position's window, so block b covers the
// windows ending at win[b*64+63 .. b*64+126]. For each position it computes
// the low 16 bits of the window's fingerprint (mats: 64 offsets x 2 output
// bytes of 8x8 GF(2) matrices) and reports the first block with a position
// whose bits under masks (low byte, second byte) are all zero, and those
// positions as a bit set; block == blocks when there is none.
//
//go:noescape
func gfniScan(win *byte, blocks int, mats *[128]uint64, masks uint64) (block int, bits uint64)
