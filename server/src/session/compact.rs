//! Giving table memory back once a crowd of sessions has gone.
//!
//! Hash maps, heaps and queues keep their largest capacity forever: 100,000 sessions that
//! came and expired would otherwise leave tables sized for them, megabytes the allocator
//! cannot return. A table far below its capacity is shrunk to twice what it holds, so one
//! that is merely breathing (filling and emptying a little) is not rebuilt every time.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;

/// Tables smaller than this are left alone: shrinking them would save little.
const MIN_CAPACITY: usize = 1024;

/// Whether a table of `len` entries in `capacity` slots is worth shrinking.
fn worth(len: usize, capacity: usize) -> bool {
    capacity > MIN_CAPACITY && len < capacity / 4
}

fn target(len: usize) -> usize {
    (2 * len).max(MIN_CAPACITY / 2)
}

pub(super) fn shrink_map<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if worth(map.len(), map.capacity()) {
        map.shrink_to(target(map.len()));
    }
}

pub(super) fn shrink_deque<T>(deque: &mut VecDeque<T>) {
    if worth(deque.len(), deque.capacity()) {
        deque.shrink_to(target(deque.len()));
    }
}

pub(super) fn shrink_heap<T: Ord>(heap: &mut BinaryHeap<T>) {
    if worth(heap.len(), heap.capacity()) {
        heap.shrink_to(target(heap.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_far_below_capacity_shrink_and_small_ones_stay() {
        let mut map: HashMap<u32, u32> = (0..100_000).map(|i| (i, i)).collect();
        map.retain(|k, _| *k < 10);
        shrink_map(&mut map);
        assert!(map.capacity() < 2_048, "{}", map.capacity());
        assert_eq!(map.len(), 10);

        let mut deque: VecDeque<u32> = (0..100_000).collect();
        deque.truncate(30_000);
        shrink_deque(&mut deque);
        assert!(deque.capacity() >= 100_000, "a quarter or more full: kept");
        deque.truncate(10);
        shrink_deque(&mut deque);
        assert!(deque.capacity() < 2_048, "{}", deque.capacity());

        let mut heap: BinaryHeap<u32> = (0..100_000).collect();
        heap.clear();
        shrink_heap(&mut heap);
        assert!(heap.capacity() < 2_048);

        let mut small: HashMap<u32, u32> = HashMap::with_capacity(500);
        let capacity = small.capacity();
        shrink_map(&mut small);
        assert_eq!(small.capacity(), capacity, "small tables are left alone");
    }
}
