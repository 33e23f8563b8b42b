package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newScheduleCmd) }

func newScheduleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Run the protection groups' schedules: scheduled backups, then retention",
		Long: `Run what the protection groups schedule (vmvault group create --sync-frequency,
--rp-times, --express-full): back up every member that is due, then apply
each group's retention range. See vmvault schedule run --help.`,
		Example: `  vmvault schedule run --repo /srv/vmvault --dry-run
  vmvault schedule run --repo /srv/vmvault --once`,
	}
	cmd.AddCommand(newScheduleRunCmd())
	return cmd
}

// scheduleRun holds the flags and state of `schedule run`.
type scheduleRun struct {
	rf     repoFlags
	jo     jobOpts
	o      engine.ScheduleOptions
	once   bool
	dryRun bool
	asJSON bool
	quiet  bool
	retry  string

	cat   *engine.Catalog
	s     *engine.Scheduler
	out   io.Writer // reports (stdout)
	errw  io.Writer // log lines and failures (stderr)
	pw    []byte
	noted string // the last "next" line printed by the loop
}

func newScheduleRunCmd() *cobra.Command {
	sr := &scheduleRun{}
	cmd := &cobra.Command{
		Use:   "run --repo DIR [--once] [--dry-run] [--json] [--group G] [--prune]",
		Short: "Back up the group members that are due (once, or as a long-running service)",
		Long: `Back up every member of the protection groups that is due by its group's
schedule, then apply each group's retention range.

When a member is due: a job kind is due when its first slot after the
member's last backup of that kind has come (times are the server's local
time):
  sync, recovery point   the first slot after the member's newest recovery point
  express full           the first slot after its newest full backup (a full
                         recovery point, or a full backup's job record)
Missed slots are not made up one by one: a member not backed up for three
days gets one backup. A manual "vmvault backup" counts like a scheduled one.
An express full reads and chunks everything; otherwise the backup is
incremental. A member whose backup failed is tried again --retry-after
later (default 30m), not in every pass.

What is backed up: the sources set for the VM with "vmvault group sources"
when there are any, otherwise the sources of the member's
latest recovery point, that is the disk files and VM folders last given to
"vmvault backup" (absolute paths; --dry-run and "vmvault rp show --json"
list them). A VM folder is scanned again, so new disks and checkpoints are
included. So every VM gets its first backup by hand, which also puts it in
its group:
  vmvault backup --repo /srv/vmvault --vm web01 --group prod /vms/web01
or its sources set (a VM that moved, or whose first backup failed):
  vmvault group sources --repo /srv/vmvault web01 /vms2/web01
A member with neither is reported as failed.

Retention: after its backups, each group that got a new recovery point is
forgotten by its retention range (as "vmvault forget --group G"); --prune
then frees the space (as "vmvault prune").

Modes:
  --once      run what is due now and exit (for cron or a systemd timer)
  (default)   keep running: sleep until the next due time (the catalog is read
              again every minute, so new groups and members are seen), run,
              repeat. SIGINT/SIGTERM stop it cleanly with exit 0: a backup
              running then is cancelled and makes no recovery point (what it
              stored is reused by the next backup).
  --dry-run   print the plan: every member, due or when next and why, and its
              sources. Changes nothing.

The repository is opened only while backups run, so other commands work in
between. While "vmvault mount" holds the repository, each pass runs inside the
mount process (as "schedule run --once"), so mounting never stops scheduled
backups; another backup holding it makes the pass wait a minute (--once:
fail). A failed member does not stop the others. Every backup leaves
a job record ("vmvault jobs": kind "backup (sync)" and so on). With --once
the exit code is 1 if any member failed, with one line per failure on
stderr; without it, failures are logged and the service goes on.`,
		Example: `  # what would run now, and when everything else runs
  vmvault schedule run --repo /srv/vmvault --dry-run
  # cron (*/5 * * * *) or a systemd timer
  vmvault schedule run --repo /srv/vmvault --once
  # a service (systemd Type=simple), freeing space after retention
  vmvault schedule run --repo /srv/vmvault --prune
  # one group, with guest freeze hooks ($VMVAULT_VM names the VM)
  vmvault schedule run --repo /srv/vmvault --once --group prod --pre-hook 'ssh "$VMVAULT_VM" fsfreeze -f /' --post-hook 'ssh "$VMVAULT_VM" fsfreeze -u /'
  # failures of the last pass as JSON
  vmvault schedule run --repo /srv/vmvault --once --json | jq '.runs[] | select(.result != "ok")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return sr.run(cmd) },
	}
	sr.rf.register(cmd)
	sr.jo.registerLimit(cmd)
	sr.jo.registerNotify(cmd)
	f := cmd.Flags()
	f.BoolVar(&sr.once, "once", false, "run what is due now and exit")
	f.BoolVar(&sr.dryRun, "dry-run", false, "print the plan only")
	f.BoolVar(&sr.asJSON, "json", false, "print the plan (--dry-run) or each pass's report as JSON")
	f.BoolVarP(&sr.quiet, "quiet", "q", false, "no log lines, only the reports and failures")
	f.StringSliceVar(&sr.o.Groups, "group", nil, "only these protection groups (repeatable; default all)")
	f.BoolVar(&sr.o.Prune, "prune", false, "prune after retention forgot recovery points")
	f.StringVar(&sr.retry, "retry-after", "30m", "wait this long after a member's failed backup before trying it again (0: next pass)")
	f.StringVar(&sr.o.PreHook, "pre-hook", "", "command run (sh -c) before each backup ($VMVAULT_VM, $VMVAULT_VM_GUID set)")
	f.StringVar(&sr.o.PostHook, "post-hook", "", "command run (sh -c) after each backup's capture, whatever happened")
	return cmd
}

func (sr *scheduleRun) run(cmd *cobra.Command) error {
	if err := sr.rf.check(); err != nil {
		return err
	}
	if sr.once && sr.dryRun {
		return errors.New("give --once or --dry-run, not both")
	}
	d, err := time.ParseDuration(sr.retry)
	if err != nil || d < 0 {
		return fmt.Errorf("--retry-after %q: want a duration such as 30m or 1h", sr.retry)
	}
	sr.o.Retry = d
	if d == 0 {
		sr.o.Retry = -1 // engine: negative is "no delay"
	}
	if err := sr.jo.prepare(); err != nil {
		return err
	}
	sr.o.Limit = sr.jo.waitN()
	sr.out, sr.errw = cmd.OutOrStdout(), cmd.ErrOrStderr()
	if !sr.quiet {
		sr.o.Logf = func(format string, args ...any) {
			fmt.Fprintf(sr.errw, time.Now().Format("2006-01-02 15:04:05 ")+format+"\n", args...)
		}
	}
	if sr.cat, err = engine.OpenCatalog(sr.rf.repo); err != nil {
		return err
	}
	if sr.pw, err = sr.rf.password(); err != nil {
		return err
	}
	sr.s = &engine.Scheduler{Options: sr.o}
	ctx, cancel := signalContext(cmd.Context())
	defer cancel()
	switch {
	case sr.dryRun:
		return sr.plan(ctx)
	case sr.once:
		return sr.pass(ctx)
	}
	return sr.loop(ctx)
}

// openRepo opens the repository for a pass. Inside a mount process (a
// pass forwarded to it) it borrows the mount's open repository.
func (sr *scheduleRun) openRepo() (*engine.Repo, error) {
	if s := serving.Load(); s != nil && s.serves(sr.rf.repo) {
		return s.repo.Borrow(), nil
	}
	return engine.Open(sr.rf.repo, engine.OpenOptions{Password: sr.pw,
		Logf: func(format string, args ...any) { fmt.Fprintf(sr.errw, format+"\n", args...) }})
}

// forwardPass runs one pass (`schedule run --once` with this command's
// flags) in the mount process that holds the repository, if one answers:
// a mounted repository does not stop scheduled backups. ok is false when
// no mount answers.
func (sr *scheduleRun) forwardPass(ctx context.Context) (code int, ok bool) {
	if serving.Load() != nil {
		return 0, false
	}
	args := append([]string(nil), os.Args[1:]...)
	if !sr.once {
		args = append(args, "--once")
	}
	sig := make(chan os.Signal, 1)
	stop := context.AfterFunc(ctx, func() { sig <- os.Interrupt })
	defer stop()
	return forwardToMount(sr.rf.repo, args, forwardIO{stdout: sr.out, stderr: sr.errw, signals: sig})
}

// plan prints what is due (--dry-run).
func (sr *scheduleRun) plan(ctx context.Context) error {
	p, err := sr.s.Plan(sr.cat, time.Now())
	if err != nil {
		return err
	}
	if repo, err := sr.openRepo(); err != nil {
		fmt.Fprintf(sr.errw, "warning: sources not shown: %v\n", err)
	} else {
		sr.s.Sources(ctx, repo, p)
		if err := repo.Close(); err != nil {
			return err
		}
	}
	if sr.asJSON {
		return printJSON(sr.out, p)
	}
	printSchedulePlan(sr.out, p)
	return nil
}

// pass plans and runs what is due once (--once): exit 1 when a member
// failed or the pass was interrupted.
func (sr *scheduleRun) pass(ctx context.Context) error {
	rep, err := sr.runDue(ctx)
	if err != nil {
		return err
	}
	if sr.asJSON {
		if err := printJSON(sr.out, rep); err != nil {
			return err
		}
	} else {
		printScheduleReport(sr.out, rep)
		if p, err := sr.s.Plan(sr.cat, time.Now()); err == nil {
			fmt.Fprintln(sr.out, nextLine(p))
		}
	}
	fails := rep.Failures()
	if rep.Interrupted {
		n := 0
		for _, r := range rep.Runs {
			if r.Result == engine.RunInterrupted || r.Result == engine.RunSkipped {
				n++
			}
		}
		fails = append(fails, fmt.Sprintf("interrupted by a signal: %d due backup(s) not made", n))
	}
	if len(fails) > 0 {
		return scheduleFailures(fails)
	}
	return nil
}

// runDue plans at now and runs the due members (the repository is open
// only for that).
func (sr *scheduleRun) runDue(ctx context.Context) (*engine.ScheduleReport, error) {
	p, err := sr.s.Plan(sr.cat, time.Now())
	if err != nil {
		return nil, err
	}
	if len(p.Due()) == 0 {
		return &engine.ScheduleReport{Plan: p, Runs: []engine.ScheduledRun{}, Retention: []engine.ScheduledForget{}}, nil
	}
	// A mounted repository: the pass runs in the mount process (tried
	// before the open, which would want the password for nothing).
	if code, ok := sr.forwardPass(ctx); ok {
		return nil, &forwardedExit{code}
	}
	repo, err := sr.openRepo()
	if errors.Is(err, chunkstore.ErrLocked) {
		if code, ok := sr.forwardPass(ctx); ok { // mounted after the first look
			return nil, &forwardedExit{code}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("schedule: %d member(s) due: %w", len(p.Due()), err)
	}
	defer repo.Close()
	limitBackupMemory(0)
	rep, err := sr.s.Run(ctx, repo, p)
	if err != nil {
		return nil, err
	}
	for _, r := range rep.Runs {
		if r.Result == engine.RunSkipped {
			continue
		}
		var rerr error
		if r.Error != "" {
			rerr = errors.New(r.Error)
		}
		sr.jo.report("backup", r.VM, r.RP, r.Start, r.BytesRead, rerr)
	}
	return rep, repo.Close()
}

// loop is the service: a pass whenever something is due, sleeping in
// between (at most a minute, to see catalog changes), until a signal.
func (sr *scheduleRun) loop(ctx context.Context) error {
	sr.logf("schedule: started (pid %d)", os.Getpid())
	for {
		rep, err := sr.runDue(ctx)
		if ctx.Err() != nil {
			if rep != nil {
				sr.printPass(rep)
			}
			sr.logf("schedule: stopped by a signal")
			return nil
		}
		wait := time.Minute
		var fe *forwardedExit
		if errors.As(err, &fe) {
			// The pass ran in the mount process holding the repository;
			// it printed its own report.
			sr.logf("schedule: pass ran through the mount process (exit %d)", fe.code)
		} else if err != nil {
			// A busy repository (a mount, a manual backup) or a damaged
			// catalog file: log it and try again.
			sr.logf("schedule: %v; trying again in %v", err, wait)
		} else {
			sr.printPass(rep)
			if p, err := sr.s.Plan(sr.cat, time.Now()); err == nil {
				if l := nextLine(p); l != sr.noted {
					sr.logf("schedule: %s", l)
					sr.noted = l
				}
				if !p.Next.IsZero() {
					wait = min(wait, time.Until(p.Next))
				}
				if len(p.Due()) > 0 {
					wait = 0
				}
			}
		}
		t := time.NewTimer(max(wait, time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			sr.logf("schedule: stopped by a signal")
			return nil
		case <-t.C:
		}
	}
}

func (sr *scheduleRun) logf(format string, args ...any) {
	if sr.o.Logf != nil {
		sr.o.Logf(format, args...)
	}
}

// printPass prints a pass of the loop that did something; failures also
// go to stderr, one line each.
func (sr *scheduleRun) printPass(rep *engine.ScheduleReport) {
	if len(rep.Runs) == 0 {
		return
	}
	if sr.asJSON {
		printJSON(sr.out, rep)
	} else {
		printScheduleReport(sr.out, rep)
	}
	for _, f := range rep.Failures() {
		fmt.Fprintf(sr.errw, "vmvault: schedule: %s\n", f)
	}
}

// scheduleFailures is the error of a pass with failures: one line each on
// stderr. main prefixes the first with "vmvault: "; the others carry the
// prefix themselves, so every line reads the same.
type scheduleFailures []string

func (f scheduleFailures) Error() string {
	return "schedule: " + strings.Join(f, "\nvmvault: schedule: ")
}

// localTime formats t for the reports (the schedule's time zone).
func localTime(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05 MST") }

// nextLine says when the next member is due.
func nextLine(p *engine.SchedulePlan) string {
	if n := len(p.Due()); n > 0 {
		return fmt.Sprintf("due now: %d member(s)", n)
	}
	if p.Next.IsZero() {
		if len(p.Members) == 0 {
			return "nothing scheduled: no group has members"
		}
		return "nothing scheduled (no group with members has a schedule)"
	}
	var who []string
	for _, m := range p.Members {
		if !m.Due && m.At.Equal(p.Next) {
			who = append(who, fmt.Sprintf("%s/%s (%s)", m.Group, m.VM, strings.Join(m.Kinds, ", ")))
		}
	}
	return fmt.Sprintf("next: %s: %s", localTime(p.Next), strings.Join(who, ", "))
}

// printSchedulePlan prints a plan group by group.
func printSchedulePlan(w io.Writer, p *engine.SchedulePlan) {
	zone, _ := p.Time.Local().Zone()
	fmt.Fprintf(w, "schedule plan at %s (server local time, %s)\n", localTime(p.Time), zone)
	if len(p.Groups) == 0 {
		fmt.Fprintln(w, "no protection groups (vmvault group create)")
	}
	for _, g := range p.Groups {
		fmt.Fprintf(w, "group %s: %s; retention: %s; %d member(s), %d due\n", g.Name, g.Schedule, g.Retention, g.Members, g.Due)
		for _, m := range p.Members {
			if m.Group != g.Name {
				continue
			}
			state := "waits"
			if m.Due {
				state = "DUE"
				if m.Full {
					state = "DUE (express full)"
				}
			}
			fmt.Fprintf(w, "  %s: %s: %s\n", m.VM, state, m.Reason)
			switch {
			case len(m.Sources) > 0:
				from := "of its latest recovery point"
				if m.SourcesFrom == engine.SourcesFromVM {
					from = "set for it (vmvault group sources)"
				}
				fmt.Fprintf(w, "    sources %s: %s\n", from, strings.Join(m.Sources, " "))
				if len(m.MissingSources) > 0 {
					fmt.Fprintf(w, "    missing now: %s (its backup will fail)\n", strings.Join(m.MissingSources, " "))
				}
			case m.SourcesError != "":
				fmt.Fprintf(w, "    sources: none: %s\n", m.SourcesError)
			}
		}
		if g.Due > 0 {
			fmt.Fprintf(w, "  then: forget by the retention range (%s)\n", g.Retention)
		}
	}
	fmt.Fprintln(w, nextLine(p))
}

// printScheduleReport prints what a pass did.
func printScheduleReport(w io.Writer, rep *engine.ScheduleReport) {
	if len(rep.Runs) == 0 {
		fmt.Fprintf(w, "nothing due at %s\n", localTime(rep.Plan.Time))
		return
	}
	for _, r := range rep.Runs {
		label, kinds := r.Group+"/"+r.VM, strings.Join(r.Kinds, ", ")
		switch r.Result {
		case engine.RunOK:
			fmt.Fprintf(w, "%s: recovery point %s (%s): read %s, new %s, stored %s in %s\n", label, r.RP, kinds,
				fmtSize(r.BytesRead), fmtSize(r.BytesNew), fmtSize(r.BytesStored), r.End.Sub(r.Start).Round(time.Millisecond))
			for _, wn := range r.Warnings {
				fmt.Fprintf(w, "  warning: %s\n", wn)
			}
		case engine.RunFailed:
			fmt.Fprintf(w, "%s: failed (%s): %s\n", label, kinds, r.Error)
		case engine.RunInterrupted:
			fmt.Fprintf(w, "%s: cancelled (%s): no recovery point made\n", label, kinds)
		case engine.RunSkipped:
			fmt.Fprintf(w, "%s: not started (%s): interrupted\n", label, kinds)
		}
	}
	for _, f := range rep.Retention {
		if f.Error != "" {
			fmt.Fprintf(w, "%s: retention failed: %s\n", f.Group, f.Error)
			continue
		}
		fmt.Fprintf(w, "%s: retention (%s): forgot %d recovery point(s), kept %d\n", f.Group, f.Policy, len(f.Forgotten), f.Kept)
	}
	if p := rep.Prune; p != nil {
		fmt.Fprintf(w, "prune: %d packs deleted, %d repacked, %s freed\n", p.GC.DeletedPacks, p.GC.RepackedPacks, fmtSize(p.GC.FreedBytes))
	}
	if rep.PruneError != "" {
		fmt.Fprintf(w, "prune failed: %s\n", rep.PruneError)
	}
}
