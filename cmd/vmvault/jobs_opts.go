package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine/notify"
	"github.com/vmvault/vmvault/engine/throttle"
)

// jobOpts are the options of long jobs: a bandwidth limit and where to
// report the outcome.
type jobOpts struct {
	limit   string
	notify  []string
	limiter *throttle.Limiter
	cmd     *cobra.Command // for its stderr
}

func (j *jobOpts) registerLimit(cmd *cobra.Command) {
	j.cmd = cmd
	cmd.Flags().StringVar(&j.limit, "limit", "", `bandwidth limit: a rate ("50MiB/s") or a schedule ("Mon-Fri 08:00-18:00=20MiB/s,*=0")`)
}

func (j *jobOpts) registerNotify(cmd *cobra.Command) {
	j.cmd = cmd
	cmd.Flags().StringSliceVar(&j.notify, "notify", nil, "report the outcome to mailto:ADDR or an http(s) webhook URL (repeatable)")
}

// prepare validates the flags before any work, so a typo fails now and
// not after a two-hour job.
func (j *jobOpts) prepare() error {
	for _, t := range j.notify {
		if err := notify.ValidateTarget(t); err != nil {
			return err
		}
	}
	if j.limit != "" {
		s, err := throttle.ParseSchedule(j.limit)
		if err != nil {
			return err
		}
		j.limiter = throttle.New(s)
	}
	return nil
}

// waitN is the engine's Limit hook, nil without --limit.
func (j *jobOpts) waitN() func(ctx context.Context, n int) error {
	if j.limiter == nil {
		return nil
	}
	return j.limiter.WaitN
}

// report sends the outcome to every --notify target. A failed notification
// is a warning: the job itself has its result already.
func (j *jobOpts) report(kind, vm, rp string, start time.Time, bytes int64, jobErr error) {
	if len(j.notify) == 0 || errors.As(jobErr, new(*forwardedExit)) {
		return // the mount process ran the job and reported it
	}
	ev := notify.Event{Event: kind, Status: notify.StatusOK, VM: vm, RP: rp, Started: start, Finished: time.Now(), Bytes: bytes}
	if jobErr != nil {
		ev.Status, ev.Error = notify.StatusFailed, jobErr.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var n notify.Notifier
	if err := n.NotifyAll(ctx, j.notify, ev); err != nil {
		w := io.Writer(os.Stderr)
		if j.cmd != nil {
			w = j.cmd.ErrOrStderr()
		}
		fmt.Fprintf(w, "warning: notification failed: %v\n", err)
	}
}
