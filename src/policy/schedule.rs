//! Opening hours: a time zone, one opening interval per weekday and holiday
//! closures; whether a queue is open and business-hours arithmetic for
//! callback deadlines. Pure functions of the instant passed in.

use std::collections::BTreeSet;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use chrono_tz::Tz;

use crate::model::Time;

/// How far ahead the business-hours arithmetic looks before giving up: a
/// schedule open at least one day a week reaches any window well within it.
const HORIZON_DAYS: u32 = 800;

/// Days in a week.
const WEEK_DAYS: u32 = 7;

/// The longest stretch of wall-clock time any zone's change skips.
const MAX_GAP_MINUTES: u32 = 180;

/// One named schedule of the policy.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The id queues refer to.
    pub id: String,
    /// Local time of the contact center.
    pub time_zone: Tz,
    /// Opening interval per weekday, Monday first, in minutes from local
    /// midnight, `[open, close)`; `None` is closed all day.
    pub week: [Option<(u16, u16)>; 7],
    /// Local dates closed all day.
    pub holidays: BTreeSet<NaiveDate>,
}

/// Minutes after local midnight of `HH:MM` (`24:00`, the end of the day,
/// included), as policy, shift and demand files write times of day.
pub fn minutes_of_day(t: &str) -> Option<u16> {
    let (h, m) = t.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

impl Schedule {
    /// A schedule open around the clock, every day, in UTC.
    pub fn always(id: &str) -> Schedule {
        Schedule {
            id: id.to_owned(),
            time_zone: Tz::UTC,
            week: [Some((0, 24 * 60)); 7],
            holidays: BTreeSet::new(),
        }
    }

    /// The opening interval of a local date, as local date-times.
    fn interval(&self, date: NaiveDate) -> Option<(NaiveDateTime, NaiveDateTime)> {
        if self.holidays.contains(&date) {
            return None;
        }
        let (open, close) = self.week[date.weekday().num_days_from_monday() as usize]?;
        let midnight = date.and_time(NaiveTime::MIN);
        Some((
            midnight + Duration::minutes(i64::from(open)),
            midnight + Duration::minutes(i64::from(close)),
        ))
    }

    /// Whether the schedule is open at `at`.
    pub fn is_open(&self, at: Time) -> bool {
        let local = at.with_timezone(&self.time_zone).naive_local();
        self.interval(local.date())
            .is_some_and(|(open, close)| open <= local && local < close)
    }

    /// The instant `minutes` of opening hours after `start`: time while closed
    /// does not count, so a window asked after hours starts at the next
    /// opening. Opening hours are counted in real time, from the instant the
    /// clock first shows the opening to the one it first shows the closing,
    /// so a day that loses or gains an hour at a daylight-saving change
    /// gives that much less or more. `None` only for a schedule that never
    /// opens.
    pub fn add_business_minutes(&self, start: Time, minutes: u32) -> Option<Time> {
        let mut remaining = Duration::minutes(i64::from(minutes));
        let mut date = start.with_timezone(&self.time_zone).date_naive();
        for _ in 0..HORIZON_DAYS {
            if let Some((open, close)) = self.interval(date) {
                let from = start.max(self.instant(open));
                let close = self.instant(close);
                if from < close {
                    let available = close - from;
                    if remaining <= available {
                        return Some(from + remaining);
                    }
                    remaining -= available;
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// When to look next whether the schedule has closed, asked at `now`:
    /// the first closing after it within a week, else a week on (a schedule
    /// open around the clock looks again then).
    pub fn next_close(&self, now: Time) -> Time {
        let mut date = now.with_timezone(&self.time_zone).date_naive();
        for _ in 0..=WEEK_DAYS {
            if let Some((_, close)) = self.interval(date) {
                // A closing in the hour a daylight-saving change repeats
                // comes twice: the clock face, as `is_open` reads it, shows
                // it open again in between.
                if let Some(at) = self
                    .instants(close)
                    .find(|&at| at > now && !self.is_open(at))
                {
                    return at;
                }
            }
            let Some(next) = date.succ_opt() else {
                break;
            };
            date = next;
        }
        now + Duration::days(i64::from(WEEK_DAYS))
    }

    /// Every instant the clock shows `local` (two in an hour a change
    /// repeats; a skipped time is the change itself).
    fn instants(&self, local: NaiveDateTime) -> impl Iterator<Item = Time> {
        let first = self.instant(local);
        let last = self
            .time_zone
            .from_local_datetime(&local)
            .latest()
            .map(|t| t.to_utc())
            .filter(|&t| t != first);
        std::iter::once(first).chain(last)
    }

    /// A local wall-clock time as the instant the clock first shows it: a
    /// time a daylight-saving change repeats is its first occurrence, as
    /// [`Schedule::is_open`] reads the clock face; a time it skips is the
    /// change itself (the first minute after the gap).
    fn instant(&self, local: NaiveDateTime) -> Time {
        let mut probe = local;
        for _ in 0..=MAX_GAP_MINUTES {
            if let Some(t) = self.time_zone.from_local_datetime(&probe).earliest() {
                return t.to_utc();
            }
            probe += Duration::minutes(1);
        }
        // No zone skips more than this; read the wall time as UTC.
        local.and_utc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn weekdays_9_to_5(tz: Tz) -> Schedule {
        let day = Some((9 * 60, 17 * 60));
        Schedule {
            id: "business".into(),
            time_zone: tz,
            week: [day, day, day, day, day, None, None],
            holidays: BTreeSet::new(),
        }
    }

    /// `YYYY-MM-DD HH:MM` in UTC.
    fn utc(s: &str) -> Time {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
    }

    fn at(tz: Tz, s: &str) -> Time {
        let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        tz.from_local_datetime(&naive).unwrap().to_utc()
    }

    #[test]
    fn open_only_inside_the_interval() {
        let tz = chrono_tz::America::New_York;
        let s = weekdays_9_to_5(tz);
        // 2026-11-23 is a Monday.
        assert!(!s.is_open(at(tz, "2026-11-23 08:59")));
        assert!(s.is_open(at(tz, "2026-11-23 09:00")));
        assert!(s.is_open(at(tz, "2026-11-23 16:59")));
        assert!(!s.is_open(at(tz, "2026-11-23 17:00")));
        assert!(!s.is_open(at(tz, "2026-11-28 12:00")), "Saturday");
    }

    #[test]
    fn window_spills_into_the_next_open_day() {
        let tz = chrono_tz::America::Chicago;
        let s = weekdays_9_to_5(tz);
        let cases = [
            // (asked at, window minutes, deadline)
            ("2026-11-23 16:30", 120, "2026-11-24 10:30"),
            ("2026-11-23 10:00", 120, "2026-11-23 12:00"),
            ("2026-11-23 15:00", 120, "2026-11-23 17:00"),
            ("2026-11-23 20:00", 120, "2026-11-24 11:00"),
            ("2026-11-27 16:00", 120, "2026-11-30 10:00"), // Friday to Monday
            ("2026-11-28 12:00", 0, "2026-11-30 09:00"),   // Saturday, no window
            ("2026-11-23 09:00", 24 * 60, "2026-11-25 17:00"), // 3 business days
        ];
        for (asked, minutes, want) in cases {
            let got = s.add_business_minutes(at(tz, asked), minutes).unwrap();
            assert_eq!(got, at(tz, want), "asked {asked} + {minutes}m");
        }
    }

    #[test]
    fn holidays_are_skipped() {
        let tz = chrono_tz::America::New_York;
        let mut s = weekdays_9_to_5(tz);
        s.holidays
            .insert(NaiveDate::from_ymd_opt(2026, 11, 26).unwrap());
        assert!(!s.is_open(at(tz, "2026-11-26 12:00")));
        let got = s
            .add_business_minutes(at(tz, "2026-11-25 16:00"), 120)
            .unwrap();
        assert_eq!(got, at(tz, "2026-11-27 10:00"));
    }

    #[test]
    fn opening_hours_count_real_time_across_daylight_saving_changes() {
        let tz = chrono_tz::America::New_York;
        let all_day = Schedule {
            time_zone: tz,
            ..Schedule::always("all-day")
        };
        // 2026-03-08: 02:00 EST becomes 03:00 EDT. 01:45 EST is 06:45 UTC.
        let got = all_day
            .add_business_minutes(at(tz, "2026-03-08 01:45"), 60)
            .unwrap();
        assert_eq!(got, utc("2026-03-08 07:45"), "an hour, not 30 minutes");
        // 2026-11-01: 02:00 EDT becomes 01:00 EST. 00:30 EDT is 04:30 UTC.
        let got = all_day
            .add_business_minutes(at(tz, "2026-11-01 00:30"), 120)
            .unwrap();
        assert_eq!(got, utc("2026-11-01 06:30"), "two hours, not three");
        // Open 00:00-03:00 on the short day: two real hours, then the next day.
        let mut night = all_day.clone();
        night.week = [Some((0, 3 * 60)); 7];
        let got = night
            .add_business_minutes(at(tz, "2026-03-08 00:00"), 150)
            .unwrap();
        assert_eq!(got, at(tz, "2026-03-09 00:30"));
        // On the long day the same interval holds four real hours.
        let got = night
            .add_business_minutes(at(tz, "2026-11-01 00:00"), 240)
            .unwrap();
        assert_eq!(got, utc("2026-11-01 08:00"), "03:00 EST");
    }

    #[test]
    fn the_next_closing_is_the_end_of_the_open_interval_or_a_week_on() {
        let tz = chrono_tz::America::New_York;
        let mut s = weekdays_9_to_5(tz);
        // Monday, open: that evening.
        let got = s.next_close(at(tz, "2026-11-23 10:00"));
        assert_eq!(got, at(tz, "2026-11-23 17:00"));
        // Friday evening, closed: Monday evening's closing is the next.
        let got = s.next_close(at(tz, "2026-11-27 18:00"));
        assert_eq!(got, at(tz, "2026-11-30 17:00"));
        // Open around the clock: no closing, a look again a week on.
        s.week = [Some((0, 24 * 60)); 7];
        let now = at(tz, "2026-11-23 10:00");
        let got = s.next_close(now);
        assert!(got > now + Duration::days(6) && s.is_open(got), "{got}");
        // A holiday after a day open to midnight: that midnight.
        s.holidays
            .insert(NaiveDate::from_ymd_opt(2026, 11, 26).unwrap());
        assert_eq!(s.next_close(now), at(tz, "2026-11-26 00:00"));
    }

    #[test]
    fn a_closing_the_clock_skips_is_the_change_itself() {
        let tz = chrono_tz::America::New_York;
        let mut s = Schedule {
            time_zone: tz,
            ..Schedule::always("night")
        };
        // Open until 02:15, which 2026-03-08 skips: closed from 03:00 EDT.
        s.week = [Some((0, 2 * 60 + 15)); 7];
        let change = utc("2026-03-08 07:00");
        let got = s.next_close(at(tz, "2026-03-08 01:00"));
        assert_eq!(got, change);
        assert!(!s.is_open(got) && s.is_open(got - Duration::minutes(1)));
        // From midnight (05:00 UTC) to the change, two real hours; the
        // rest of a 150-minute window falls on the next night.
        let got = s.add_business_minutes(at(tz, "2026-03-08 00:00"), 150);
        assert_eq!(got, Some(at(tz, "2026-03-09 00:30")));
    }

    #[test]
    fn a_closing_the_clock_repeats_comes_twice() {
        let tz = chrono_tz::America::New_York;
        let mut s = Schedule {
            time_zone: tz,
            ..Schedule::always("night")
        };
        // Open until 01:30, which 2026-11-01 shows twice (EDT, then EST).
        s.week = [Some((0, 90)); 7];
        assert_eq!(
            s.next_close(utc("2026-11-01 05:05")),
            utc("2026-11-01 05:30")
        );
        // 01:05 EST: the clock face says open again, until the second 01:30.
        assert!(s.is_open(utc("2026-11-01 06:05")));
        assert_eq!(
            s.next_close(utc("2026-11-01 06:05")),
            utc("2026-11-01 06:30")
        );
    }

    #[test]
    fn never_open_gives_none_and_always_open_is_plain_addition() {
        let mut never = Schedule::always("never");
        never.week = [None; 7];
        let now = Utc::now();
        assert_eq!(never.add_business_minutes(now, 10), None);
        let always = Schedule::always("always");
        assert!(always.is_open(now));
        assert_eq!(
            always.add_business_minutes(now, 90),
            Some(now + Duration::minutes(90))
        );
    }
}
