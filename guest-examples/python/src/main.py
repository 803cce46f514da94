"""Prices of what is asked for, from a table loaded once.

Run as a command: `wasmhost run app.toml -- apple pear`.
"""

import sys

import pandas

PRICES = pandas.DataFrame({"item": ["apple", "pear", "fig"], "price": [3, 4, 5]}).set_index("item")


def main(items):
    for item in items:
        price = PRICES["price"].get(item)
        print(f"{item}: {price if price is not None else 'unknown'}")


if __name__ == "__main__":
    main(sys.argv[1:])
