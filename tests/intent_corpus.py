"""A small labelled intent corpus (25 intents x 40 short texts) generated from slot templates."""

import itertools
import numpy as np

# intent -> (templates with {a} and {b} slots, fillers for a, fillers for b)
INTENTS = {
    "card_lost": (["I {a} my {b}", "my {b} has been {a}", "help, {a} {b}"], ["lost", "misplaced", "had stolen", "can't find"], ["credit card", "debit card", "bank card", "visa card"]),
    "card_arrival": (["when will my {b} {a}", "my {b} still hasn't {a}", "how long until my {b} will {a}"], ["arrive", "be delivered", "come in the post", "get here"], ["new card", "replacement card", "debit card", "credit card"]),
    "balance": (["{a} my {b}", "what is my {b}, {a}", "can you {a} the {b}"], ["show", "check", "tell me", "look up"], ["account balance", "current balance", "available funds", "savings balance"]),
    "transfer": (["{a} money to my {b}", "I want to {a} cash to my {b}", "{a} 50 pounds to my {b}"], ["send", "transfer", "wire", "pay"], ["friend", "sister", "landlord", "other account"]),
    "exchange_rate": (["what is the {a} rate for {b}", "{a} rate from pounds to {b}", "how many {b} per dollar at today's {a} rate"], ["exchange", "conversion", "currency", "FX"], ["euros", "yen", "swiss francs", "dollars"]),
    "pin_change": (["how do I {a} my {b}", "I want to {a} the {b} on my card", "{a} {b} please"], ["change", "reset", "update", "pick a new"], ["PIN", "PIN number", "PIN code", "card PIN"]),
    "atm_fee": (["why was I {a} at the {b}", "{b} {a} on my statement", "there is a fee, I was {a} by the {b}"], ["charged", "billed", "charged a fee", "hit with a fee"], ["ATM", "cash machine", "cashpoint", "ATM withdrawal"]),
    "refund": (["I want a {a} for my {b}", "how do I get a {a} on this {b}", "the shop owes me a {a} for the {b}"], ["refund", "reimbursement", "money back", "full refund"], ["order", "purchase", "return", "cancelled item"]),
    "weather": (["what's the {a} for {b}", "will there be {a} {b}", "tell me the {a} {b}"], ["weather", "forecast", "rain", "sunshine"], ["tomorrow", "this afternoon", "the weekend", "tonight"]),
    "alarm": (["{a} an alarm for {b}", "wake me up at {b}, {a} an alarm", "I need an alarm {a} for {b}"], ["set", "create", "put on", "schedule"], ["7 am", "six in the morning", "half past five", "8:15"]),
    "music": (["play some {a} {b}", "put on {a} {b}", "I want to listen to {a} {b}"], ["jazz", "rock", "classical", "relaxing"], ["music", "songs", "playlist", "tunes"]),
    "recipe": (["how do I {a} {b}", "give me a recipe to {a} {b}", "what's the best way to {a} {b}"], ["cook", "bake", "make", "prepare"], ["banana bread", "lasagna", "pancakes", "chicken curry"]),
    "flight_status": (["is my {b} {a}", "has flight {b} been {a}", "check if my {b} is {a}"], ["delayed", "on time", "cancelled", "late"], ["flight", "plane", "BA117 flight", "connecting flight"]),
    "hotel_booking": (["{a} a hotel room in {b}", "I need to {a} accommodation in {b}", "{a} me a hotel near {b}"], ["book", "reserve", "find", "get"], ["Paris", "Rome", "the airport", "London"]),
    "taxi": (["{a} me a {b}", "I need a {b} to the airport, {a} one", "{a} a {b} to the station"], ["call", "order", "get", "book"], ["taxi", "cab", "uber", "ride"]),
    "restaurant": (["{a} a table at a {b} restaurant", "I'd like to {a} dinner at a {b} place", "{a} a {b} restaurant for four tonight"], ["book", "reserve", "find", "get"], ["italian", "sushi", "thai", "steak"]),
    "password_reset": (["I {a} my {b}", "help, I {a} the {b} for my account", "{a} {b}, can't sign in"], ["forgot", "lost", "need to reset", "can't remember"], ["password", "login password", "account password", "passcode"]),
    "delivery_tracking": (["where is my {b}, {a}", "{a} my {b}", "can you {a} the {b} I ordered"], ["track", "locate", "find", "trace"], ["parcel", "package", "delivery", "order"]),
    "cancel_subscription": (["{a} my {b}", "I want to {a} the {b}", "please {a} my {b} today"], ["cancel", "stop", "end", "terminate"], ["subscription", "membership", "monthly plan", "premium service"]),
    "translate": (["{a} hello into {b}", "how do I say thank you in {b}, {a} it", "{a} this sentence to {b}"], ["translate", "convert", "put", "say"], ["spanish", "french", "german", "italian"]),
    "timer": (["{a} a timer for {b}", "{a} a countdown of {b}", "time {b} for me, {a} it now"], ["set", "start", "run", "begin"], ["ten minutes", "five minutes", "half an hour", "90 seconds"]),
    "joke": (["{a} me a {b}", "can you {a} a {b}", "I'd love to hear you {a} a {b}"], ["tell", "say", "share", "give"], ["joke", "funny joke", "pun", "silly joke"]),
    "calendar": (["{a} a {b} to my calendar", "what {b} do I have, {a} my calendar", "{a} my calendar for the {b}"], ["add", "check", "update", "put"], ["meeting", "dentist appointment", "call with John", "team lunch"]),
    "thermostat": (["{a} the heating to {b}", "{a} the thermostat to {b}", "can you {a} the temperature to {b}"], ["set", "turn", "raise", "lower"], ["21 degrees", "18 degrees", "warm", "cooler"]),
    "lights": (["turn {a} the {b} lights", "switch {a} the {b} lamp", "{b} lights {a} please"], ["on", "off", "down", "up"], ["kitchen", "bedroom", "hallway", "living room"]),
}
PREFIXES = ["", "hi, ", "please ", "hey, ", "quick question: "]


def intent_corpus(per_intent=40, seed=0):
    """Short texts for 25 intents, ``per_intent`` each, from slot templates: (texts, intents)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for label, (templates, fill_a, fill_b) in INTENTS.items():
        combos = list(itertools.product(templates, fill_a, fill_b, PREFIXES))
        for i in rng.permutation(len(combos))[:per_intent]:
            template, a, b, prefix = combos[i]
            texts.append(prefix + template.format(a=a, b=b))
            labels.append(label)
    return texts, labels
