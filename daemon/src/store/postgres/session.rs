//! Where a store call's statements run: an open transaction, or the connection itself.

use super::*;

/// Where a transaction's statements go: an open transaction, or the connection itself for a
/// store call of one statement (`Store::read_one`, `Store::decide`: one statement is its own
/// transaction, and the BEGIN and COMMIT round trips are saved). A second statement there is
/// refused, not run outside the transaction.
pub(crate) enum Session<'a> {
    Tx(Transaction<'a>),
    One { client: &'a mut Client, ran: bool },
}

impl Session<'_> {
    pub(crate) fn prepare(&mut self, sql: Sql) -> Result<Statement> {
        Ok(match self {
            Session::Tx(tx) => tx.prepare(sql)?,
            Session::One { client, .. } => client.prepare(sql)?,
        })
    }

    /// The connection or transaction a statement may run on now.
    pub(crate) fn next(&mut self) -> Result<&mut dyn Run> {
        match self {
            Session::Tx(tx) => Ok(tx),
            Session::One { ran: true, .. } => Err(StoreError::Remote(
                "internal error: a one-statement store call ran a second statement".into(),
            )),
            Session::One { client, ran } => {
                *ran = true;
                Ok(*client)
            }
        }
    }
}

/// What a statement runs on: `Client` or `Transaction` (the crate's `GenericClient` is not
/// object-safe).
pub(crate) trait Run {
    fn run_execute(&mut self, s: &Statement, p: Params<'_>) -> Result<u64>;
    fn run_query(&mut self, s: &Statement, p: Params<'_>) -> Result<Vec<Row>>;
}

impl Run for Client {
    fn run_execute(&mut self, s: &Statement, p: Params<'_>) -> Result<u64> {
        Ok(self.execute(s, p)?)
    }
    fn run_query(&mut self, s: &Statement, p: Params<'_>) -> Result<Vec<Row>> {
        Ok(self.query(s, p)?)
    }
}

impl Run for Transaction<'_> {
    fn run_execute(&mut self, s: &Statement, p: Params<'_>) -> Result<u64> {
        Ok(self.execute(s, p)?)
    }
    fn run_query(&mut self, s: &Statement, p: Params<'_>) -> Result<Vec<Row>> {
        Ok(self.query(s, p)?)
    }
}
