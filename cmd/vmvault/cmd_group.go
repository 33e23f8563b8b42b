package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/engine"
)

func init() { commands = append(commands, newGroupCmd) }

func newGroupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group",
		Short: "Manage protection groups: retention range, schedule and member VMs",
		Long: `A protection group is a policy shared by a set of VMs:

  retention range   how many days of recovery points a forget keeps
                    (vmvault forget --group G, or forget --vm V of a member,
                    without --keep-* flags)
  schedule          sync frequency (15m to 24h), daily recovery point times,
                    express full backups; times are the server's local time.
                    "vmvault schedule run" runs it (a service, or --once from
                    cron); each member backs up the sources set with
                    "vmvault group sources", else those of its latest
                    recovery point

Groups live in the repository catalog (catalog/groups/<name>.json). A VM is in
at most one group; it enters the catalog with its first backup, so a new VM
joins with "vmvault backup --group G", a known one with "vmvault group add".
Recovery points record the group their VM was in when they were made.`,
		Example: `  vmvault group create prod --repo /srv/vmvault --retention-days 14 --sync-frequency 15m --rp-times 08:00,20:00 --express-full "Sun 02:00"
  vmvault backup --repo /srv/vmvault --vm web01 --group prod /vms/web01
  vmvault group add prod --repo /srv/vmvault db01 app01
  vmvault group sources --repo /srv/vmvault db01 /vms2/db01
  vmvault group show prod --repo /srv/vmvault
  vmvault schedule run --repo /srv/vmvault --dry-run
  vmvault forget --repo /srv/vmvault --group prod --dry-run`,
	}
	cmd.AddCommand(newGroupCreateCmd(), newGroupAddCmd(), newGroupRemoveCmd(), newGroupListCmd(),
		newGroupShowCmd(), newGroupDeleteCmd(), newGroupSourcesCmd())
	return cmd
}

func newGroupCreateCmd() *cobra.Command {
	var (
		rf     repoFlags
		g      engine.Group
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME --repo DIR --retention-days N [--sync-frequency DUR] [--rp-times HH:MM,...] [--express-full SCHEDULE]",
		Short: "Create a protection group",
		Long: `Create a protection group with a retention range and, optionally, a schedule.

  --retention-days N       keep N days of recovery points (1 to 36500), counted
                           back from each VM's newest point in calendar days
  --sync-frequency DUR     how often changes are synchronised: 15m to 24h in
                           whole minutes; slots restart at local midnight, so
                           7h runs at 00:00, 07:00, 14:00, 21:00
  --rp-times HH:MM,...     daily recovery point times (24-hour clock)
  --express-full SCHEDULE  express full backups: DAYS HH:MM[,HH:MM], DAYS being
                           daily, Sun, Mon-Fri, Sat,Sun ... ("Sun 02:00")

The schedule is checked (and its next run times shown) before anything is
stored; a group name is 1-64 letters, digits, '.', '_' or '-'. Nothing runs
by itself: "vmvault schedule run" (as a service, or --once from cron or a
systemd timer) backs up the members when they are due.`,
		Example: `  vmvault group create prod --repo /srv/vmvault --retention-days 14 --sync-frequency 15m --rp-times 08:00,12:00,20:00 --express-full "Sun 02:00"
  vmvault group create lab --repo /srv/vmvault --retention-days 3`,
		Args: exactArgs(1, "give the group NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := rf.check(); err != nil {
				return err
			}
			if !cmd.Flags().Changed("retention-days") {
				return fmt.Errorf("--retention-days is required")
			}
			cat, err := engine.OpenCatalog(rf.repo)
			if err != nil {
				return err
			}
			g.Name = args[0]
			created, err := cat.CreateGroup(g)
			if err != nil {
				return err
			}
			v, err := cat.ShowGroup(created.Name, time.Now())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created group %s\n", created.Name)
			printGroup(cmd.OutOrStdout(), v, false)
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().IntVar(&g.RetentionDays, "retention-days", 0, "retention range in days (required)")
	cmd.Flags().StringVar(&g.SyncFrequency, "sync-frequency", "", "synchronisation frequency, 15m to 24h (default: none)")
	cmd.Flags().StringSliceVar(&g.RPTimes, "rp-times", nil, "daily recovery point times, HH:MM[,HH:MM...]")
	cmd.Flags().StringVar(&g.ExpressFull, "express-full", "", `express full schedule, e.g. "Sun 02:00" or "daily 23:00"`)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the new group as JSON")
	return cmd
}

func newGroupAddCmd() *cobra.Command {
	var rf repoFlags
	cmd := &cobra.Command{
		Use:   "add NAME VM... --repo DIR",
		Short: "Add VMs (names or GUIDs) to a protection group",
		Long: `Add VMs the catalog knows (backed up at least once) to a protection group.
A VM in another group is refused: remove it there first. Nothing changes
unless every VM can be added. A VM never backed up joins with its first
backup: vmvault backup --group NAME --vm VM ...`,
		Example: `  vmvault group add prod --repo /srv/vmvault web01 db01`,
		Args:    minArgs(2, "give the group NAME and at least one VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cat, err := rf.catalog()
			if err != nil {
				return err
			}
			changed, err := cat.AddToGroup(args[0], args[1:]...)
			if err != nil {
				return err
			}
			for _, vm := range changed {
				fmt.Fprintf(cmd.OutOrStdout(), "added %s (%s) to %s\n", vm.Name, vm.GUID, args[0])
			}
			if n := len(args) - 1 - len(changed); n > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%d VM(s) already in %s\n", n, args[0])
			}
			return nil
		},
	}
	rf.register(cmd)
	return cmd
}

func newGroupRemoveCmd() *cobra.Command {
	var rf repoFlags
	cmd := &cobra.Command{
		Use:   "remove NAME VM... --repo DIR",
		Short: "Take VMs out of a protection group",
		Long: `Take VMs out of a protection group. Their recovery points stay (and keep the
group they were made in); a forget without --keep-* flags no longer applies
the group's retention range to them. A VM not in the group is an error, and
nothing changes unless every VM can be removed.`,
		Example: `  vmvault group remove prod --repo /srv/vmvault web01`,
		Args:    minArgs(2, "give the group NAME and at least one VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cat, err := rf.catalog()
			if err != nil {
				return err
			}
			changed, err := cat.RemoveFromGroup(args[0], args[1:]...)
			if err != nil {
				return err
			}
			for _, vm := range changed {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s (%s) from %s\n", vm.Name, vm.GUID, args[0])
			}
			return nil
		},
	}
	rf.register(cmd)
	return cmd
}

// groupListItem is one line of `group list --json`.
type groupListItem struct {
	engine.Group
	Members []string `json:"members"`
}

func newGroupListCmd() *cobra.Command {
	var (
		rf     repoFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "list --repo DIR [--json]",
		Short:   "List protection groups with their policy and members",
		Long:    `List every protection group: retention range, schedule and member VMs.`,
		Example: `  vmvault group list --repo /srv/vmvault --json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cat, err := rf.catalog()
			if err != nil {
				return err
			}
			gs, err := cat.ListGroups()
			if err != nil {
				return err
			}
			out := []groupListItem{}
			for _, g := range gs {
				ms, err := cat.GroupMembers(g.Name)
				if err != nil {
					return err
				}
				it := groupListItem{Group: g, Members: []string{}}
				for _, m := range ms {
					it.Members = append(it.Members, m.Name)
				}
				out = append(out, it)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tRETENTION\tSCHEDULE\tMEMBERS")
			for _, it := range out {
				fmt.Fprintf(tw, "%s\t%dd\t%s\t%s\n", it.Name, it.RetentionDays, scheduleText(it.Group), orNone(strings.Join(it.Members, ",")))
			}
			return tw.Flush()
		},
	}
	rf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

func newGroupShowCmd() *cobra.Command {
	var (
		rf     repoFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "show NAME --repo DIR [--json]",
		Short: "Show a protection group: members, policy, next runs, space used and needed",
		Long: `Show a protection group: its retention range and schedule, the next run of
each scheduled job kind (from now, server local time), its members with their
recovery points, and its disk space:

  used      the bytes stored by the members' remaining recovery points when
            they were made (new chunks after dedup and compression, without
            erasure-coding parity) plus their manifests' sizes. Data a point
            shares with another VM or group counts where it was stored first;
            chunks of forgotten points that a prune has not removed yet are
            not counted.
  estimate  the space the group needs once its retention range is full:
            base (each member's oldest remaining point, its initial full copy)
            + retention days x the average daily growth of its history. It
            needs at least two recovery points at different times, else it
            says "not enough history".`,
		Example: `  vmvault group show prod --repo /srv/vmvault
  vmvault group show prod --repo /srv/vmvault --json | jq .space`,
		Args: exactArgs(1, "give the group NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cat, err := rf.catalog()
			if err != nil {
				return err
			}
			v, err := cat.ShowGroup(args[0], time.Now())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			printGroup(cmd.OutOrStdout(), v, true)
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

func newGroupDeleteCmd() *cobra.Command {
	var (
		rf    repoFlags
		force bool
	)
	cmd := &cobra.Command{
		Use:   "delete NAME --repo DIR [--force]",
		Short: "Delete a protection group (refused while it has members, unless --force)",
		Long: `Delete a protection group. A group with members is refused; --force first
takes every member out. Recovery points are never deleted by this: they stay
(with the group recorded) until a forget.`,
		Example: `  vmvault group delete lab --repo /srv/vmvault
  vmvault group delete old --repo /srv/vmvault --force`,
		Args: exactArgs(1, "give the group NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cat, err := rf.catalog()
			if err != nil {
				return err
			}
			out, err := cat.DeleteGroup(args[0], force)
			if err != nil {
				return err
			}
			for _, vm := range out {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s from %s\n", vm.Name, args[0])
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted group %s\n", args[0])
			return nil
		},
	}
	rf.register(cmd)
	cmd.Flags().BoolVar(&force, "force", false, "delete even with members (they leave the group)")
	return cmd
}

func newGroupSourcesCmd() *cobra.Command {
	var (
		rf      repoFlags
		doClear bool
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "sources VM [PATH...] --repo DIR [--clear] [--json]",
		Short: "Show or set what the scheduler backs a VM up from",
		Long: `Show or set the sources of a VM's scheduled backups ("vmvault schedule run").

Without an override, a scheduled backup reads what the VM's latest recovery
point was made from: the disk files and VM folders last given to "vmvault
backup". An override, stored in the VM's catalog record, replaces them: a VM
that moved is followed without a manual backup. A manual "vmvault backup"
does not change the override, and the override wins over it for scheduled
backups until --clear.

  VM                 show the sources and where they come from ("vm": the
                     override; "latest-rp": the latest recovery point, whose
                     manifest is read, so an encrypted repository needs the
                     password)
  VM PATH...         set the override: disk files (.vhdx, .avhdx, raw) and
                     Hyper-V VM folders (scanned again at every backup).
                     Relative paths are made absolute here, against the
                     current directory; paths need not exist yet (a warning
                     says so, and "schedule run --dry-run" shows missing ones)
  VM --clear         remove the override: back to the latest recovery point's

The VM is a name or GUID the catalog knows: a VM enters it with its first
backup. With --json, a VM alone prints {"vm", "vm_guid", "group", "sources",
"sources_from", "rp"}; with PATHs or --clear, the VM record as stored.`,
		Example: `  vmvault group sources --repo /srv/vmvault web01
  vmvault group sources --repo /srv/vmvault web01 /vms2/web01
  vmvault group sources --repo /srv/vmvault db01 /vms/db01/disk0.vhdx /vms/db01/logs.vhdx
  vmvault group sources --repo /srv/vmvault web01 --clear
  vmvault schedule run --repo /srv/vmvault --dry-run --json | jq '.members[] | {vm, sources, sources_from}'`,
		Args: minArgs(1, "give the VM (and PATHs to set its sources)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cat, err := rf.catalog()
			if err != nil {
				return err
			}
			vm, paths := args[0], args[1:]
			switch {
			case doClear && len(paths) > 0:
				return fmt.Errorf("give PATHs or --clear, not both")
			case doClear:
				v, err := cat.ClearVMSources(vm)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), v)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "cleared the sources of %s (%s): scheduled backups read those of its latest recovery point\n", v.Name, v.GUID)
				return nil
			case len(paths) > 0:
				return setVMSources(cmd, cat, vm, paths, asJSON)
			}
			return showVMSources(cmd, &rf, cat, vm, asJSON)
		},
	}
	rf.register(cmd)
	cmd.Flags().BoolVar(&doClear, "clear", false, "remove the override (back to the latest recovery point's sources)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "JSON output")
	return cmd
}

// setVMSources stores paths, made absolute against the current directory
// (the scheduler's service has another one), as vm's source override.
func setVMSources(cmd *cobra.Command, cat *engine.Catalog, vm string, paths []string, asJSON bool) error {
	abs := make([]string, len(paths))
	for i, p := range paths {
		if p == "" {
			// filepath.Abs would make it the current directory.
			return fmt.Errorf("source %d is an empty path", i+1)
		}
		a, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("source %s: %w", p, err)
		}
		abs[i] = a
	}
	v, err := cat.SetVMSources(vm, abs)
	if err != nil {
		return err
	}
	for _, p := range v.Sources {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s does not exist now: scheduled backups of %s fail until it does\n", p, v.Name)
		}
	}
	if asJSON {
		return printJSON(cmd.OutOrStdout(), v)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "set the sources of %s (%s)\n", v.Name, v.GUID)
	printSources(cmd.OutOrStdout(), &engine.SourcesView{VM: v.Name, VMGUID: v.GUID, Group: v.Group,
		Sources: v.Sources, SourcesFrom: engine.SourcesFromVM})
	return nil
}

// showVMSources prints what a scheduled backup of vm reads. The override
// needs only the catalog; the latest recovery point's sources are in its
// manifest, so only then is the repository opened.
func showVMSources(cmd *cobra.Command, rf *repoFlags, cat *engine.Catalog, vm string, asJSON bool) error {
	sv, err := cat.VMSourceOverride(vm)
	if err != nil {
		return err
	}
	if sv == nil {
		repo, err := rf.open()
		if err != nil {
			return err
		}
		defer repo.Close()
		if sv, err = repo.VMSources(cmd.Context(), vm); err != nil {
			return err
		}
	}
	if asJSON {
		return printJSON(cmd.OutOrStdout(), sv)
	}
	printSources(cmd.OutOrStdout(), sv)
	return nil
}

// printSources prints a SourcesView: where the sources come from, one
// path a line.
func printSources(w io.Writer, sv *engine.SourcesView) {
	from := "set for it (vmvault group sources; --clear goes back to its latest recovery point's)"
	if sv.SourcesFrom == engine.SourcesFromLatestRP {
		from = "of its latest recovery point " + sv.RP
	}
	fmt.Fprintf(w, "%s (%s): scheduled backups read the sources %s:\n", sv.VM, sv.VMGUID, from)
	for _, p := range sv.Sources {
		fmt.Fprintf(w, "  %s\n", p)
	}
	if sv.Group == "" {
		fmt.Fprintf(w, "%s is in no protection group: the scheduler does not back it up (vmvault group add GROUP %s)\n", sv.VM, sv.VM)
	}
}

// scheduleText renders a group's schedule in one line.
func scheduleText(g engine.Group) string {
	var parts []string
	if g.SyncFrequency != "" {
		parts = append(parts, "sync every "+g.SyncFrequency)
	}
	if len(g.RPTimes) > 0 {
		parts = append(parts, "recovery points at "+strings.Join(g.RPTimes, ","))
	}
	if g.ExpressFull != "" {
		parts = append(parts, "express full "+g.ExpressFull)
	}
	if len(parts) == 0 {
		return "none (manual)"
	}
	return strings.Join(parts, "; ")
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printGroup prints a GroupView; full adds members and space.
func printGroup(w io.Writer, v *engine.GroupView, full bool) {
	fmt.Fprintf(w, "group %s (created %s)\n", v.Name, v.Created.Local().Format(time.RFC3339))
	fmt.Fprintf(w, "  retention range: %d days (forget policy: %s)\n", v.RetentionDays, v.Policy)
	zone, _ := time.Now().Zone()
	fmt.Fprintf(w, "  schedule: %s (server local time, %s)\n", scheduleText(v.Group), zone)
	if v.NextRun == nil {
		fmt.Fprintln(w, "  next run: nothing scheduled")
	} else {
		fmt.Fprintf(w, "  next run: %s (%s)\n", v.NextRun.Time.Local().Format("Mon 2006-01-02 15:04 MST"), strings.Join(v.NextRun.Kinds, ", "))
	}
	for _, n := range v.Next {
		fmt.Fprintf(w, "  next %s: %s\n", n.Kind, n.Time.Local().Format("Mon 2006-01-02 15:04 MST"))
	}
	if !full {
		return
	}
	fmt.Fprintf(w, "  members: %d\n", len(v.Members))
	for _, m := range v.Members {
		span := ""
		if m.RecoveryPoints > 0 {
			span = fmt.Sprintf(", %s .. %s", m.Oldest.Local().Format("2006-01-02 15:04"), m.Newest.Local().Format("2006-01-02 15:04"))
		}
		fmt.Fprintf(w, "    %s (%s): %d recovery points%s, stored %s\n", m.Name, m.GUID, m.RecoveryPoints, span, fmtSize(m.BytesStored))
	}
	s := v.Space
	fmt.Fprintf(w, "  space used: %s by %d recovery points (data %s + manifests %s)\n",
		fmtSize(s.Used), s.RecoveryPoints, fmtSize(s.DataStored), fmtSize(s.Manifests))
	fmt.Fprintf(w, "    counted: %s\n", s.Counted)
	if e := s.Estimate; e != nil {
		fmt.Fprintf(w, "  estimate for %d days: %s (base %s + %d x %s/day)\n",
			e.RetentionDays, fmtSize(e.Total), fmtSize(e.Base), e.RetentionDays, fmtSize(e.DailyChange))
		if s.EstimateNote != "" {
			fmt.Fprintf(w, "    note: %s\n", s.EstimateNote)
		}
	} else {
		fmt.Fprintf(w, "  estimate for %d days: %s\n", v.RetentionDays, s.EstimateError)
	}
}

// exactArgs and minArgs are cobra argument checks with a message that
// says what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s (got %d arguments; see %s --help)", what, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return fmt.Errorf("%s (see %s --help)", what, cmd.CommandPath())
		}
		return nil
	}
}
