// Package agent will hold the host-side protection agent that runs on each
// Hyper-V host and the agent<->server protocol (chunk on the host, ask the
// server which chunks it lacks with chunkstore's batched Has, send only
// those; certificate authentication between untrusted domains).
//
// Nothing is implemented yet: today the embedded, single-machine product
// backs up local files through engine directly (vmvault backup).
package agent
