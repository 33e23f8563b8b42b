package retention_test

import (
	"fmt"
	"strings"
	"time"

	"github.com/vmvault/vmvault/engine/retention"
)

func ExampleApply() {
	var points []retention.Point
	newest := time.Date(2026, 11, 26, 10, 15, 0, 0, time.UTC)
	for i := 0; i < 6; i++ {
		t := newest.Add(-time.Duration(i) * 20 * time.Hour)
		points = append(points, retention.Point{ID: t.Format("2006-01-02T150405Z"), Time: t})
	}
	res, err := retention.Apply(points, retention.Policy{KeepLast: 1, KeepDaily: 3, Location: time.UTC})
	if err != nil {
		panic(err)
	}
	for _, k := range res.Keep {
		fmt.Println("keep  ", k.ID, strings.Join(k.Reasons, ", "))
	}
	for _, f := range res.Forget {
		fmt.Println("forget", f.ID)
	}
	// Output:
	// keep   2026-11-26T101500Z last, daily 2026-11-26
	// keep   2026-11-25T141500Z daily 2026-11-25
	// keep   2026-11-24T181500Z daily 2026-11-24
	// forget 2026-11-23T221500Z
	// forget 2026-11-23T021500Z
	// forget 2026-11-22T061500Z
}

func ExampleSchedule() {
	s := retention.Schedule{
		SyncFrequency: 15 * time.Minute,
		RPTimes:       []string{"08:00", "20:00"},
		ExpressFull:   "Sun 02:00",
		Location:      time.UTC,
	}
	p, err := s.Plan()
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 11, 26, 10, 7, 0, 0, time.UTC)
	fmt.Println(p.Sync.Next(now).Format("Mon 15:04"))
	fmt.Println(p.RecoveryPoints.Next(now).Format("Mon 15:04"))
	fmt.Println(p.ExpressFull.Next(now).Format("Mon 15:04"))
	// Output:
	// Thu 10:15
	// Thu 20:00
	// Sun 02:00
}
