//go:build race

package throttle

// The race detector slows everything down several times over, so timing
// assertions mean nothing under -race.
const raceEnabled = true
