package engine

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/vmvault/vmvault/engine/retention"
)

// ForgetOptions select recovery points to forget, per VM:
//
//   - IDs: exactly these points (VM required);
//   - Policy (engine/retention: keep-last/hourly/daily/weekly/monthly/
//     yearly/within, retention days): every point it does not keep;
//   - neither: the retention range of the VM's protection group (with
//     Group, that group's). A VM without a group then keeps everything.
//
// IDs and Policy combine (the IDs are forgotten even if the policy would
// keep them); IDs alone never apply a group's policy implicitly.
type ForgetOptions struct {
	VM     string   // name or GUID; "" with Group or All
	Group  string   // every VM of this protection group (which must exist)
	All    bool     // every VM
	IDs    []string // explicit recovery points (VM required)
	Policy retention.Policy
	DryRun bool
}

// ForgetReport is what a Forget did (or, for a dry run, would do).
type ForgetReport struct {
	DryRun    bool       `json:"dry_run"`
	VMs       []ForgetVM `json:"vms"`
	Forgotten int        `json:"forgotten"`
	Kept      int        `json:"kept"`
}

// ForgetVM is the decision for one VM.
type ForgetVM struct {
	VM     string `json:"vm"`
	VMGUID string `json:"vm_guid"`
	Group  string `json:"group,omitempty"`
	// Policy is the policy applied, in words (retention.Policy.String),
	// and PolicyFrom where it came from: "flags", "group <name>", or
	// "none" (explicit IDs only, or a VM without group and flags).
	Policy     string     `json:"policy"`
	PolicyFrom string     `json:"policy_from"`
	Keep       []Decision `json:"keep"`
	Forget     []Decision `json:"forget"`
}

// Decision is one recovery point with the reasons it is kept ("last",
// "daily 2026-11-20", "retention 30d", "no policy") or forgotten
// ("explicit", "no rule keeps it"). Lists are newest first.
type Decision struct {
	ID      string    `json:"id"`
	Time    time.Time `json:"time"`
	Reasons []string  `json:"reasons"`
}

// forgottenNames returns the forgotten points as "<vm>/<rp-id>".
func (r *ForgetReport) forgottenNames() []string {
	var out []string
	for _, v := range r.VMs {
		for _, d := range v.Forget {
			out = append(out, v.VM+"/"+d.ID)
		}
	}
	return out
}

// Forget removes recovery point pointers: the points disappear from every
// listing at once. Their chunks stay until a prune (chunkstore garbage
// collection) removes the ones no remaining manifest references. Every
// run, dry runs included, leaves a job record of kind "forget".
//
// Decisions are engine/retention's Apply over each VM's points, so a dry
// run shows exactly what the real run deletes.
func (c *Catalog) Forget(o ForgetOptions) (rep *ForgetReport, err error) {
	if len(o.IDs) > 0 && o.VM == "" {
		return nil, errors.New("engine: forget: recovery point IDs need a VM")
	}
	if err := o.Policy.Validate(); err != nil {
		return nil, fmt.Errorf("engine: forget: %w", err)
	}
	if o.Policy.Location == nil {
		o.Policy.Location = time.Local
	}
	explicit := !o.Policy.Empty()
	job := c.startJob("forget", o.VM)
	job.Group, job.DryRun = o.Group, o.DryRun
	defer func() {
		if rep != nil {
			job.Forgotten = rep.forgottenNames()
		}
		c.finishJob(job, err)
	}()
	// Decisions and removals under the catalog write lock: two forgets
	// (or a forget and a group change) see each other's result.
	unlock, err := c.cat.lock()
	if err != nil {
		return nil, fmt.Errorf("engine: forget: %w", err)
	}
	defer unlock()

	var vms []VM
	var group *Group
	switch {
	case o.VM != "":
		vm, err := c.FindVM(o.VM)
		if err != nil {
			return nil, fmt.Errorf("engine: forget: %w", err)
		}
		job.VMGUID = vm.GUID
		vms = []VM{vm}
	case o.Group != "":
		g, err := c.Group(o.Group)
		if err != nil {
			return nil, err
		}
		group = &g
		if vms, err = c.GroupMembers(o.Group); err != nil {
			return nil, err
		}
	case o.All:
		if vms, err = c.ListVMs(); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("engine: forget: give a VM, a group or all")
	}

	rep = &ForgetReport{DryRun: o.DryRun}
	anyPolicy := false
	for _, vm := range vms {
		fv := ForgetVM{VM: vm.Name, VMGUID: vm.GUID, Group: vm.Group, PolicyFrom: "none"}
		pol := retention.Policy{}
		switch {
		case explicit:
			pol, fv.PolicyFrom = o.Policy, "flags"
		case len(o.IDs) > 0:
		case group != nil:
			pol, fv.PolicyFrom = group.Policy(), "group "+group.Name
		case vm.Group != "":
			g, gerr := c.Group(vm.Group)
			switch {
			case gerr == nil:
				pol, fv.PolicyFrom = g.Policy(), "group "+g.Name
			case errors.Is(gerr, ErrUnknownGroup):
				// A record from before groups had files: no policy.
				fv.PolicyFrom = "none (group " + vm.Group + " does not exist)"
			default:
				return rep, fmt.Errorf("engine: forget: VM %s: %w", vm.Name, gerr)
			}
		}
		anyPolicy = anyPolicy || !pol.Empty()
		fv.Policy = pol.String()
		if err := c.decide(&fv, pol, o.IDs); err != nil {
			return rep, err
		}
		rep.VMs = append(rep.VMs, fv)
	}
	if !anyPolicy && len(o.IDs) == 0 {
		what := "the selected VMs are in no protection group"
		if len(vms) == 0 {
			what = "no VM selected"
			if group != nil {
				what = "group " + group.Name + " has no members"
			}
		}
		return rep, fmt.Errorf("engine: forget: nothing to forget: %s (give recovery point IDs, --keep-* flags, or put the VM in a group: vmvault group add)", what)
	}

	for _, fv := range rep.VMs {
		rep.Kept += len(fv.Keep)
		if o.DryRun || len(fv.Forget) == 0 {
			rep.Forgotten += len(fv.Forget)
			continue
		}
		for _, d := range fv.Forget {
			if err := os.Remove(c.cat.path(rpsDir, fv.VMGUID, d.ID+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return rep, fmt.Errorf("engine: forget: %w", err)
			}
			rep.Forgotten++
		}
		if err := syncDir(c.cat.path(rpsDir, fv.VMGUID)); err != nil {
			return rep, fmt.Errorf("engine: forget: %w", err)
		}
	}
	return rep, nil
}

// decide fills fv.Keep and fv.Forget from the VM's points, the policy and
// the explicit IDs (which must all exist).
func (c *Catalog) decide(fv *ForgetVM, pol retention.Policy, ids []string) error {
	ps, err := listPointers(c.cat, fv.VMGUID)
	if err != nil {
		return err
	}
	pts := make([]retention.Point, len(ps))
	for i, p := range ps {
		pts[i] = retention.Point{ID: p.ID, Time: p.Time}
	}
	explicit := map[string]bool{}
	for _, id := range ids {
		found := false
		for _, p := range ps {
			found = found || p.ID == id
		}
		if !found {
			return fmt.Errorf("engine: forget: VM %s: %s: %w", fv.VM, id, ErrUnknownRP)
		}
		explicit[id] = true
	}
	res, err := retention.Apply(pts, pol)
	if err != nil {
		return fmt.Errorf("engine: forget: %w", err)
	}
	fv.Keep, fv.Forget = []Decision{}, []Decision{}
	// Merge both lists back into newest-first order.
	type entry struct {
		pt      retention.Point
		reasons []string
		kept    bool
	}
	var all []entry
	for _, k := range res.Keep {
		all = append(all, entry{k.Point, k.Reasons, true})
	}
	for _, f := range res.Forget {
		all = append(all, entry{f, nil, false})
	}
	sort.SliceStable(all, func(i, j int) bool {
		if !all[i].pt.Time.Equal(all[j].pt.Time) {
			return all[i].pt.Time.After(all[j].pt.Time)
		}
		return all[i].pt.ID > all[j].pt.ID
	})
	for _, e := range all {
		d := Decision{ID: e.pt.ID, Time: e.pt.Time, Reasons: e.reasons}
		switch {
		case explicit[d.ID] && e.kept && !pol.Empty():
			d.Reasons = []string{"explicit (policy would keep: " + strings.Join(e.reasons, ", ") + ")"}
			fv.Forget = append(fv.Forget, d)
		case explicit[d.ID]:
			d.Reasons = []string{"explicit"}
			fv.Forget = append(fv.Forget, d)
		case e.kept:
			fv.Keep = append(fv.Keep, d)
		default:
			d.Reasons = []string{"no rule keeps it"}
			fv.Forget = append(fv.Forget, d)
		}
	}
	return nil
}
