//! What a notification is and what it says.

/// What a notification tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Paid and allocated.
    Confirmed,
    /// Paid, waiting for stock.
    Backordered,
    /// Cancelled.
    Cancelled,
}

impl Kind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "CONFIRMED",
            Self::Backordered => "BACKORDERED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// The kind a stored string names, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Confirmed, Self::Backordered, Self::Cancelled].into_iter().find(|k| k.as_str() == s)
    }

    /// The message sent about order `order_id` (with `detail`, the backorder's reason).
    pub fn message(self, order_id: &str, detail: &str) -> String {
        match self {
            Self::Confirmed => format!("Your order {order_id} is confirmed and its items are reserved."),
            Self::Backordered => format!("Your order {order_id} is paid and waits for stock ({detail})."),
            Self::Cancelled => format!("Your order {order_id} is cancelled."),
        }
    }

    /// The mail provider's idempotency key of this kind of message about `order_id`: one
    /// message per order and kind, however often its event is delivered.
    pub fn idempotency_key(self, order_id: &str) -> String {
        format!("{order_id}/{}", self.as_str())
    }
}

/// A message sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// UUIDv7.
    pub id: String,
    /// Its recipient.
    pub user_id: String,
    /// The order it is about.
    pub order_id: String,
    /// What it tells.
    pub kind: Kind,
    /// Its text.
    pub body: String,
    /// The provider's id of the message.
    pub provider_message_id: String,
    /// When it was sent, epoch milliseconds.
    pub send_time_ms: i64,
}

/// Whose notifications a list asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// A user's.
    User(String),
    /// An order's.
    Order(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_keys_are_per_order_and_kind() {
        for kind in [Kind::Confirmed, Kind::Backordered, Kind::Cancelled] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_ne!(Kind::Confirmed.idempotency_key("o"), Kind::Cancelled.idempotency_key("o"));
        assert!(Kind::Backordered.message("o", "A: 0 on hand, 1 ordered").contains("A: 0 on hand"));
    }
}
